"""The webhooks domain: landed Stripe webhooks -> events -> reconciled state, repair, and (when the
dunning module is present) dunning on top of it."""

from __future__ import annotations

import importlib

import dagster as dg

from pipelines.cadence import SCHEDULE_STATUS
from pipelines.defs.publish.assets import with_snapshot
from pipelines.defs.webhooks.assets import GROUP, STATE_ASSETS
from pipelines.defs.webhooks.sensors import build_landing_sensor

stripe_state_job = dg.define_asset_job(
    "stripe_state_job",
    selection=with_snapshot(dg.AssetSelection.groups(GROUP)),
    description="Land new webhook files and rebuild the reconciled Stripe state.",
)

stripe_repair_job = dg.define_asset_job(
    "stripe_repair_job",
    selection=with_snapshot(dg.AssetSelection.groups(GROUP)),
    config={"ops": {"stripe_webhook_events": {"config": {"repair": True, "refetch": True}}}},
    description="Fill webhook gaps from Stripe's /v1/events (30 days), re-fetch touched objects, rebuild state.",
)

stripe_repair_schedule = dg.ScheduleDefinition(
    name="stripe_repair_schedule", job=stripe_repair_job, cron_schedule="17 3 * * *",
    execution_timezone="UTC", default_status=SCHEDULE_STATUS,
)

_webhook_defs = dg.Definitions(
    assets=STATE_ASSETS,
    jobs=[stripe_state_job, stripe_repair_job],
    sensors=[build_landing_sensor(stripe_state_job)],
    schedules=[stripe_repair_schedule],
)


def _optional_dunning() -> list[dg.Definitions]:
    """The dunning engineer's `dunning_assets` module, when it exists (so both can land independently)."""
    try:
        module = importlib.import_module("pipelines.defs.webhooks.dunning_assets")
    except ModuleNotFoundError as exc:
        if exc.name == "pipelines.defs.webhooks.dunning_assets":
            return []
        raise
    found = getattr(module, "defs", None)
    if isinstance(found, dg.Definitions):
        return [found]
    assets = [v for v in vars(module).values() if isinstance(v, (dg.AssetsDefinition, dg.AssetChecksDefinition))]
    return [dg.Definitions(assets=[a for a in assets if isinstance(a, dg.AssetsDefinition)],
                           asset_checks=[a for a in assets if isinstance(a, dg.AssetChecksDefinition)])]


defs = dg.Definitions.merge(_webhook_defs, *_optional_dunning())

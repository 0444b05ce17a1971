"""One dunning run: state, actions, state again, reminders sent, suspensions published.

The same steps back the CLI (`metering dunning run`) and the Dagster assets (`dunning_state`,
`dunning_actions`). Re-running with the same clock does nothing new.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import stripe

from metering.dunning import outbox
from metering.dunning.actions import ActionHooks, ActionReport, perform_actions, read_ledger
from metering.dunning.policy import DunningPolicy
from metering.dunning.state import IN_DUNNING, current_state, refresh_state, utc
from metering.dunning.suspensions import compute_suspensions, publish_suspensions

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    state: pl.DataFrame
    report: ActionReport
    suspensions: pl.DataFrame
    reminders_sent: int


def act_and_publish(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient | None,
    policy: DunningPolicy,
    state: pl.DataFrame,
    now: datetime,
    *,
    outbox_folder: Path | None = None,
    published_folder: Path | None = None,
    hooks: ActionHooks | None = None,
) -> tuple[ActionReport, pl.DataFrame, int]:
    """Perform due actions for `state`, send rendered reminders (SMTP configured), publish suspensions.

    Reminders are sent against the state as it stands after the actions, so a reminder waiting for
    the relay is withdrawn, not sent, once its invoice is paid or a later reminder replaced it.
    """
    report = perform_actions(con, client, policy, state, now, outbox_folder=outbox_folder, hooks=hooks)
    # our own write-off / paid retry count at once, before Stripe's webhooks confirm them
    state = current_state(con, policy, now)
    open_invoices = state.filter(pl.col("state") == IN_DUNNING)["invoice_id"].to_list()
    sent, errors = outbox.send_pending(con, utc(now), outbox.outbox_dir(outbox_folder), open_invoices)
    report.errors.extend(errors)
    suspensions = compute_suspensions(state, read_ledger(con), now)
    publish_suspensions(con, suspensions, now, published_folder)
    return report, suspensions, sent


def run_dunning(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient | None,
    policy: DunningPolicy,
    now: datetime,
    *,
    outbox_folder: Path | None = None,
    published_folder: Path | None = None,
    hooks: ActionHooks | None = None,
) -> RunResult:
    """Refresh `dunning_state`, act, and publish. See the module doc."""
    now = utc(now)
    state = refresh_state(con, policy, now)
    report, suspensions, sent = act_and_publish(
        con, client, policy, state, now,
        outbox_folder=outbox_folder, published_folder=published_folder, hooks=hooks,
    )
    final_state = refresh_state(con, policy, now)
    log.info("dunning run", extra={"now": now.isoformat(), "actions": report.counts,
                                   "suspended": suspensions.height, "errors": len(report.errors)})
    return RunResult(final_state, report, suspensions, sent)

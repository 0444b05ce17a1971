"""Invoice items (metering/stripe/invoice_items.py): gaps a fifth hand mutation audit (m31e) found.

Covers the run report's counts (what a run leaves for an operator, the summary's wording), and a
defect found by reading: a failed revision the charge no longer needs is counted as failed, for an
operator, on every later run (fixed in the thirty-first session; the test fails on `a65de4b`).

Real sandbox over loopback on a test clock, real DuckDB, the real SDK; helpers imported from the
neighbouring tests. Every amount is one the test rated by hand.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import polars as pl
import pytest

from metering import warehouse
from metering.stripe.invoice_items import (
    InvoiceItemBiller, InvoiceItemsReport, _periods_with_late_usage, closed_targets, item_key,
)
from push_world import FAST_RETRY, OCT1, SEP1, SEPTEMBER, customer_on_clock, rate_by_hand as rate
from test_invoice_items import (
    CSV, NOW, _late_window, biller, items_at_stripe, ledger, rated_on_version_2026_10, record_versions,
)

OFF_CLOCK = pl.DataFrame(schema={"customer_id": pl.String, "clock_now": pl.Datetime("us", "UTC")})


def test_a_failed_revision_the_charge_no_longer_needs_leaves_nothing_for_an_operator(
        tmp_path: Path, rules_dir: Path) -> None:
    """DEFECT (m31e). Revision 1 bills the 40.00 minimum onto September's draft. Re-rated to 50.00,
    revision 2 (+10.00) gets a 429 on every attempt: `failed`, Stripe holds nothing for it. Re-rated back
    to 40.00: Stripe holds 4000, exactly the rated 4000 (billed = 4000, revision 2 failed and not counted),
    so nothing is due and no call made. That run left no row failed and nothing needs an operator; the
    report counted revision 2 (the charge's latest) as failed, needs_operator 1 (the command exits
    non-zero), and would on every run from then on."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        assert biller(con, client).run(SEPTEMBER).acknowledged == 1

        rate(con, {"minimum spend": 5000}, rated_at=OCT1 + dt.timedelta(days=1))
        sb.inject_fault("rate_limit", path="/v1/invoiceitems", method="POST", count=FAST_RETRY.max_attempts)
        refused = biller(con, client).run(SEPTEMBER)
        assert (refused.new_revisions, refused.failed) == (1, 1)
        sb.clear_faults()

        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(days=2))
        settled = biller(con, client).run(SEPTEMBER)
        assert (settled.new_revisions, settled.calls) == (0, 0)
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [4000]
        assert ledger(con).select("revision", "amount_minor", "status").rows() == [
            (1, 4000, "acknowledged"), (2, 1000, "failed")]
        assert (settled.failed, settled.needs_operator) == (0, 0)


def test_an_empty_runs_summary_says_it_billed_nothing() -> None:
    """A run that billed nothing says `billed nothing`, not an empty amount list."""
    text = InvoiceItemsReport(SEPTEMBER).summary()
    assert text.startswith("invoice items 2026-09: 0 closed charge(s)")
    assert "billed nothing (minor units)" in text


def test_a_billers_bucket_holds_a_seconds_worth_of_calls() -> None:
    """At 20 calls/s the biller's token bucket holds int(20) = 20 tokens: 20 calls go at once (0 s
    waited each), not one at a time; under 1 call/s it still holds one (max(1, int(0.5) or 1) = 1)."""
    limiter = InvoiceItemBiller(None, None, rate=20).limiter
    assert (limiter.burst, InvoiceItemBiller(None, None, rate=0.5).limiter.burst) == (20.0, 1.0)
    assert [limiter.acquire() for _ in range(20)] == [0.0] * 20


def test_the_unmapped_warning_names_five_customers_of_six(tmp_path: Path, rules_dir: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Six customers not synced to Stripe (c0..c5), one closed 40.00 minimum each (off a clock: the wall
    "now", Nov 26, is past Oct 1 and the rating ran at Oct 1 00:10): 6 unmapped, no call, and the warning
    names five of them (`head(5)`), in order, not one."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        for n in range(6):
            rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10), customer=f"c{n}")
        with caplog.at_level(logging.WARNING, logger="metering.stripe.invoice_items"):
            run = biller(con, client).run(SEPTEMBER)
        assert (run.unmapped, run.calls, run.new_revisions) == (6, 0, 0)
        [message] = [r.getMessage() for r in caplog.records if "not synced to Stripe" in r.getMessage()]
        assert message.startswith("6 charge(s) not billed: customers not synced to Stripe (e.g. ")
        named = message.split("(e.g. ")[1].split(")")[0].split(", ")
        assert len(named) == 5 and named == sorted(named) and set(named) < {f"c{n}" for n in range(6)}


def test_the_closing_rating_is_the_periods_not_each_charges(tmp_path: Path) -> None:
    """Off a clock, September closes once any rating of the period ran at or after Oct 1 00:00. The
    minimum's line was last written at Oct 1 00:10, the filtered tokens' (no usage since) at Sep 30 23:00:
    both charges are the closed period's (4000 and 700), not only the one rated after the end."""
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        rate(con, {"minimum spend": 4000, "tokens large": 700}, rated_at=OCT1 + dt.timedelta(minutes=10))
        con.execute("UPDATE rated_usage SET rated_at = ? WHERE charge = 'tokens large'",
                    [OCT1 - dt.timedelta(hours=1)])
        closed = closed_targets(con, SEPTEMBER, NOW, OFF_CLOCK).sort("charge")
        assert closed.select("charge", "target_minor").rows() == [("minimum spend", 4000), ("tokens large", 700)]


def test_a_month_whose_items_are_all_on_invoices_is_not_looked_up_again(tmp_path: Path, rules_dir: Path) -> None:
    """Revision 1 (the 40.00 minimum) is acknowledged onto September's draft: Stripe put it on an
    invoice, so it is neither in flight nor held pending. A run with nothing due lists no invoice
    items at Stripe (no GET /v1/invoiceitems) and makes no call: only rows not settled are looked up."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        assert biller(con, client).run(SEPTEMBER).on_draft_invoice == 1
        listed = len(sb.requests_log("/v1/invoiceitems", "GET"))
        again = biller(con, client).run(SEPTEMBER)
        assert (again.calls, again.new_revisions, again.settled_by_listing) == (0, 0, 0)
        assert len(sb.requests_log("/v1/invoiceitems", "GET")) == listed


def test_a_usage_charge_is_billed_when_the_subscriptions_version_prices_no_meter_at_all(
        tmp_path: Path, rules_dir: Path) -> None:
    """acme's Stripe subscription is on pro 2026-01; its September tokens were rated on scale 2026-01
    (a plan change the sync did not switch). Pro 2026-01 recorded, but no price of it in stripe_objects:
    the subscription's version prices no meter (an empty list, not an unknown one), so nothing at Stripe
    bills the tokens: scale's 'tokens large' (4.50, rated by hand) is billed as an item, not set aside as
    another version's."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))   # September closed
        record_versions(con, rules, ("pro", "2026-01"), ("scale", "2026-01"))
        con.execute("DELETE FROM stripe_objects WHERE kind = 'price' AND our_key LIKE 'pro|2026-01|%'")
        con.execute(
            "INSERT INTO rated_usage (customer_id, period_start, period_end, segment_start, segment_end, plan, "
            "plan_version, rules_hash, charge_id, charge, model, meter, quantity, amount, amount_minor, currency, "
            "rounding, rated_at) VALUES ('acme', ?, ?, ?, ?, 'scale', '2026-01', 'h', 0, 'tokens large', 'per_unit', "
            "'tokens', 3000000, 4.50, 450, 'usd', 'half_up', ?)",
            [SEPTEMBER, OCT1.date(), SEPTEMBER, OCT1.date(), OCT1 + dt.timedelta(minutes=10)])
        run = biller(con, client).run(SEPTEMBER)
        assert (run.other_version, run.acknowledged, run.needs_operator) == (0, 1, 0)
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [450]


def test_a_charges_target_is_the_sum_of_its_segments_lines(tmp_path: Path) -> None:
    """A charge rated in two segments of September (Sep 1-16 and Sep 16-Oct 1, e.g. a seat change) has
    two lines, 3.00 and 4.00: its target is their sum, 700, not the larger line."""
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        rate(con, {"tokens large": 300}, rated_at=OCT1 + dt.timedelta(minutes=10))
        con.execute("""INSERT INTO rated_usage SELECT * REPLACE (DATE '2026-09-16' AS segment_start,
                           1 AS charge_id, 400 AS amount_minor, 4.00 AS amount) FROM rated_usage""")
        con.execute("UPDATE rated_usage SET segment_end = DATE '2026-09-16' WHERE amount_minor = 300")
        closed = closed_targets(con, SEPTEMBER, NOW, OFF_CLOCK)
        assert closed.select("charge", "target_minor").rows() == [("tokens large", 700)]


def test_an_item_the_ledger_lost_is_recorded_for_a_charge_whose_name_holds_a_bar(
        tmp_path: Path, rules_dir: Path) -> None:
    """metadata[metering_charge] is `plan|version|charge`, split at its first two bars: the charge name
    may hold one. Stripe holds revision 2 (40.00) of pro 2026-01 'min|spend' under a key the ledger does
    not hold; the rated 40.00 is already billed: revision 2 is recorded, the new revision 1 superseded,
    no call, and Stripe still holds the one 40.00 (not 80.00)."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
        con.execute("INSERT INTO stripe_catalog_findings (finding, kind, our_key, synced_at) VALUES "
                    "('not_expressible', 'price', 'pro|2026-01|min|spend', now())")
        rate(con, {"min|spend": 4000}, rated_at=OCT1 + dt.timedelta(hours=1))
        key = item_key("acme", SEPTEMBER, "pro", "2026-01", "min|spend", 2)
        client.v1.invoice_items.create({
            "customer": cus, "amount": 4000, "currency": "usd",
            "period": {"start": int(SEP1.timestamp()), "end": int(OCT1.timestamp()) - 1},
            "metadata": {"metering_item": key, "metering_customer_id": "acme",
                         "metering_period_start": "2026-09-01", "metering_charge": "pro|2026-01|min|spend",
                         "metering_revision": "2"}})
        run = biller(con, client).run(SEPTEMBER)
        assert (run.calls, run.needs_operator) == (0, 0)
        assert ledger(con).sort("revision").select("charge", "revision", "status", "amount_minor").rows() == [
            ("min|spend", 1, "failed", 4000), ("min|spend", 2, "acknowledged", 4000)]
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [4000]



def test_the_hold_warning_counts_the_charges_it_holds(tmp_path: Path, rules_dir: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The 70.00 true-up is billed; a late push window (Sep 29) and a re-rating to 40.00 make a 30.00
    credit in a period with usage Stripe never billed: held. The warning counts the one charge held and
    names it: "1 charge(s) left for an operator: ... (e.g. {... 'charge': 'minimum spend'})"."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 7000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        biller(con, client).run(SEPTEMBER)
        _late_window(con, "acme", dt.date(2026, 9, 29))
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(days=2))
        with caplog.at_level(logging.WARNING, logger="metering.stripe.invoice_items"):
            run = biller(con, client).run(SEPTEMBER)
        assert (run.held, run.calls) == (1, 0)
        [message] = [r.getMessage() for r in caplog.records if "left for an operator" in r.getMessage()]
        assert message.startswith("1 charge(s) left for an operator: their periods have usage Stripe never billed")
        assert "'charge': 'minimum spend'" in message


def test_a_late_window_at_the_periods_first_instant_is_the_periods(tmp_path: Path) -> None:
    """A push window of acme marked `late` starting Sep 1 00:00 UTC, September's first instant, is
    inside [Sep 1, Oct 1): the period holds late usage (its credits are held)."""
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        rate(con, {"minimum spend": 4000}, rated_at=OCT1)
        _late_window(con, "acme", SEPTEMBER)
        assert _periods_with_late_usage(con, SEPTEMBER).rows() == [("acme", SEPTEMBER)]


def test_a_row_resent_under_its_key_goes_to_the_subscription_it_chose(tmp_path: Path, rules_dir: Path) -> None:
    """September's invoice is final, so revision 1 (40.00) chose to wait pending for acme's subscription,
    under the key naming it; every call was dropped (nothing applied): `unknown`. The customer map then
    loses the subscription (a later sync). The next run, an hour on (the key young), resends the row
    under its key to the destination fixed with it: Stripe holds one 40.00 pending for that subscription,
    and the ledger still names it."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, sub = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(hours=1))
        sb.inject_fault("drop", path="/v1/invoiceitems", method="POST", count=100)
        assert biller(con, client).run(SEPTEMBER).unknown == 1
        sb.clear_faults()
        con.execute("UPDATE stripe_customer_map SET subscription_id = NULL")

        run = biller(con, client, now=NOW + dt.timedelta(hours=1)).run(SEPTEMBER)
        assert (run.acknowledged, run.pending_next, run.new_revisions) == (1, 1, 0)
        [item] = client.v1.invoice_items.list({"customer": cus}).data
        assert (item.amount, item.invoice, item.parent.subscription_details.subscription) == (4000, None, sub)
        assert ledger(con).select("revision", "status", "subscription_id").rows() == [(1, "acknowledged", sub)]


@pytest.mark.parametrize(("sub_plan", "sub_version"), [("pro", None), (None, "2026-10")],
                         ids=["plan-known-version-not", "version-label-known-plan-not"])
def test_a_subscription_known_by_half_its_plan_version_is_another_version(
        tmp_path: Path, rules_dir: Path, sub_plan: str | None, sub_version: str | None) -> None:
    """September's lines are rated on pro 2026-10, with a 25.00 filtered 'api calls us' usage charge (on
    the api_calls meter) beside the 15.00 minimum. acme's subscription is mapped with only half its plan
    version: plan pro of an unknown version, or version label 2026-10 of an unknown plan (labels repeat
    across plans). Neither is known to be pro 2026-10, so the usage charge waits for an operator (its
    meter may be priced: other_version 1) and only the minimum (no meter) is billed: 1500."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))   # September closed
        con.execute("UPDATE stripe_customer_map SET plan = ?, plan_version = ?", [sub_plan, sub_version])
        rate(con, {"minimum spend": 1500}, rated_at=OCT1 + dt.timedelta(minutes=10))
        rated_on_version_2026_10(con, filtered=True)
        run = biller(con, client).run(SEPTEMBER)
        assert (run.other_version, run.acknowledged, run.needs_operator) == (1, 1, 1)
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [1500]


def test_a_charge_billed_before_waits_while_its_newest_revision_is_in_flight(tmp_path: Path, rules_dir: Path) -> None:
    """Revision 1 (40.00) is acknowledged. Re-rated to 50.00: revision 2 (+10.00), every call dropped,
    `unknown`. Re-rated to 60.00 while Stripe still drops every call: the charge has a row in flight
    (revision 2), though not all its rows are (revision 1 is settled), so no revision 3 is planned; the
    run resends revision 2 under its young key and leaves it unknown: one row for the look-up, not two."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        assert biller(con, client).run(SEPTEMBER).acknowledged == 1
        rate(con, {"minimum spend": 5000}, rated_at=OCT1 + dt.timedelta(days=1))
        sb.inject_fault("drop", path="/v1/invoiceitems", method="POST", count=100)
        assert biller(con, client).run(SEPTEMBER).unknown == 1

        rate(con, {"minimum spend": 6000}, rated_at=OCT1 + dt.timedelta(days=2))
        run = biller(con, client, now=NOW + dt.timedelta(hours=1)).run(SEPTEMBER)
        assert (run.new_revisions, run.unknown) == (0, 1)
        assert ledger(con).select("revision", "amount_minor", "status").rows() == [
            (1, 4000, "acknowledged"), (2, 1000, "unknown")]


def test_a_run_counts_the_revisions_it_plans_in_every_round(tmp_path: Path, rules_dir: Path) -> None:
    """The 51.00 minimum is billed onto September's draft, the invoice finalized, and the ledger restored
    from an empty snapshot; the minimum is re-rated to 60.00. The run plans revision 1 (6000), finds it at
    Stripe holding 5100 (recorded so), and plans revision 2 (6000 - 5100 = 900) in its next round: two
    new revisions, one call, Stripe holding 5100 + 900."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 5100}, rated_at=OCT1 + dt.timedelta(minutes=10))
        biller(con, client).run(SEPTEMBER)
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))   # finalized
        con.execute("DELETE FROM stripe_invoice_items")                              # the restore
        rate(con, {"minimum spend": 6000}, rated_at=OCT1 + dt.timedelta(days=1))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.new_revisions, run.settled_by_listing, run.calls) == (2, 1, 1)
        assert sorted(a for a, _, _ in items_at_stripe(client, cus)) == [900, 5100]


def test_a_charge_found_short_at_stripe_under_a_lost_key_is_topped_up_in_the_same_run(
        tmp_path: Path, rules_dir: Path) -> None:
    """Stripe holds September's minimum as revision 2 (40.00) only, under a key the (restored) ledger does
    not hold; the minimum is now rated 50.00 and September's invoice is final. The run plans revision 1
    (50.00), records revision 2 from Stripe (superseding the unsent revision 1), and plans the charge
    again at once: revision 3 bills the 10.00 still owed (5000 - 4000) in the same run, pending."""
    from test_ledger_items_mutants26 import _by_hand

    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
        _by_hand(client, cus, 4000, SEPTEMBER, 2)
        rate(con, {"minimum spend": 5000}, rated_at=OCT1 + dt.timedelta(hours=1))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.calls, run.pending_next, run.billed_minor, run.needs_operator) == (1, 1, {"usd": 1000}, 0)
        assert ledger(con).sort("revision").select("revision", "amount_minor", "status").rows() == [
            (1, 5000, "failed"), (2, 4000, "acknowledged"), (3, 1000, "acknowledged")]
        assert sorted(a for a, _, _ in items_at_stripe(client, cus)) == [1000, 4000]

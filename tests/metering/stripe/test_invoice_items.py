"""Charges Stripe cannot price (minimums, dimension-filtered prices) billed as Stripe invoice items:
onto the period's draft invoice, else the next invoice; exactly once under lost responses; a change
after billing is billed as its difference. Real sandbox on a test clock, real warehouse.

The rated lines are written by hand, so every expected amount is the sum of lines this file chose.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering import warehouse
from metering.cli import cli
from metering.errors import EXIT_EXTERNAL, EXIT_USAGE
from metering.stripe.invoice_items import InvoiceItemBiller, InvoiceItemsReport, idempotency_key, item_key
from push_world import FAST_RETRY, OCT1, SEP1, SEPTEMBER, customer_on_clock, rate_by_hand as rate

NOV1 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
CSV = """customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior
acme,Acme,billing@acme.test,usd,,pro,2026-01-01,succeeds
"""
# pro 2026-01: "tokens large" (a model filter) and "minimum spend" have no Stripe price; the platform
# fee has one (a licensed price of $49.00)
NOT_IN_STRIPE = ("tokens large", "minimum spend")


NOW = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)   # the biller's "now" unless a test says otherwise


def biller(con: Any, client: Any, now: dt.datetime = NOW) -> InvoiceItemBiller:
    return InvoiceItemBiller(con, client, rate=0, retry=FAST_RETRY, now=lambda: now)


def items_at_stripe(client: Any, customer: str) -> list[tuple[int, str | None, str]]:
    return sorted((i.amount, i.invoice, i.metadata["metering_item"])
                  for i in client.v1.invoice_items.list({"customer": customer, "limit": 100}).auto_paging_iter())


def cycle_invoice(client: Any, customer: str, period_end: dt.datetime) -> Any:
    [invoice] = [i for i in client.v1.invoices.list({"customer": customer, "limit": 100}).data
                 if i.billing_reason == "subscription_cycle" and i.period_end == int(period_end.timestamp())]
    return invoice


def ledger(con: Any) -> pl.DataFrame:
    return warehouse.query_frame(con, "SELECT * FROM stripe_invoice_items ORDER BY charge, revision")


def minimum_left_unknown(sb: Any, con: Any, client: Any, clock: Any, *, drops: int = 50,
                         now: dt.datetime = NOW) -> None:
    """September closed and its 40.00 minimum rated; every call to bill it dropped (`drops` of them, left
    in place): revision 1 is `unknown`."""
    sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
    rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
    sb.inject_fault("drop", path="/v1/invoiceitems", method="POST", count=drops)
    assert biller(con, client, now).run(SEPTEMBER).unknown == 1


def rated_on_version_2026_10(con: Any, *, filtered: bool) -> None:
    """Every rated line moved to version 2026-10, beside a 25.00 usage charge on the api_calls meter ('api
    calls us'), which the catalog sync found Stripe cannot price when `filtered` (a dimension filter)."""
    con.execute("UPDATE rated_usage SET plan_version = '2026-10'")
    con.execute("INSERT INTO rated_usage SELECT * REPLACE ('api calls us' AS charge, 'api_calls' AS meter, "
                "2500 AS amount_minor, 25.00 AS amount) FROM rated_usage")
    if filtered:
        con.execute("INSERT INTO stripe_catalog_findings (finding, kind, our_key, synced_at) VALUES "
                    "('not_expressible', 'price', 'pro|2026-10|api calls us', now())")


def record_versions(con: Any, rules: Any, *versions: tuple[str, str]) -> None:
    """Record plan versions in `rules_versions` as rating does for the versions it rates (here the lines
    are written by hand): the biller reads there which meters a subscription's version prices."""
    for plan, version in versions:
        pv = rules.version(plan, version)
        con.execute("INSERT INTO rules_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [plan, version, pv.content_hash, pv.currency, pv.effective_from,
                     json.dumps(pv.canonical(), sort_keys=True, separators=(",", ":")), OCT1])


def test_a_closed_periods_charges_go_onto_its_draft_invoice_once(tmp_path: Path, rules_dir: Path) -> None:
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))  # September's invoice: draft
        draft = cycle_invoice(client, cus, OCT1)
        assert draft.status == "draft"
        before = draft.total
        rate(con, {"platform fee": 4900, "tokens large": 1234, "minimum spend": 3866},
             rated_at=OCT1 + dt.timedelta(minutes=10))

        first = biller(con, client).run(SEPTEMBER)
        assert (first.charges, first.new_revisions, first.acknowledged, first.on_draft_invoice) == (2, 2, 2, 2)
        assert first.billed_minor == {"usd": 1234 + 3866}
        assert items_at_stripe(client, cus) == sorted([
            (1234, draft.id, item_key("acme", SEPTEMBER, "pro", "2026-01", "tokens large", 1)),
            (3866, draft.id, item_key("acme", SEPTEMBER, "pro", "2026-01", "minimum spend", 1))])

        again = biller(con, client).run(SEPTEMBER)  # nothing changed: nothing sent
        assert (again.new_revisions, again.calls) == (0, 0)
        assert len(items_at_stripe(client, cus)) == 2

        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))  # past the grace hour
        final = client.v1.invoices.retrieve(draft.id)
        assert final.status != "draft"
        assert final.total == before + 1234 + 3866
        assert ledger(con)["status"].to_list() == ["acknowledged", "acknowledged"]


def test_an_open_period_is_not_billed(tmp_path: Path, rules_dir: Path) -> None:
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        rate(con, {"minimum spend": 5000}, rated_at=OCT1 - dt.timedelta(hours=1))  # rated before its end
        run = biller(con, client).run(SEPTEMBER)
        assert (run.charges, run.calls) == (0, 0)
        assert items_at_stripe(client, report.customers[0]["stripe_customer_id"]) == []


def at(when: dt.datetime) -> int:
    """A test clock's frozen time for `when`."""
    return int(when.timestamp())


def test_a_period_open_on_the_customers_test_clock_is_not_billed_though_the_wall_clock_is_past_it(
        tmp_path: Path, rules_dir: Path) -> None:
    """Audit: the main job's customers live on a test clock (about Oct 1) while the wall clock says late
    November. Periods were called closed by their wall-clock `rated_at`, so true-ups rated from a few
    days of usage went to Stripe, pending, for periods that had not ended for the customer. A period
    is closed when it has ended on the customer's clock. Amounts (pro 2026-01, minimum 100.00 over the
    usage lines; the flat fee is Stripe's): on Sep 3, 1 seat x 10.00 and 50,000 large tokens x 0.000002
    = 0.10, true-up 100.00 - 10.10 = 89.90; on the whole month, 3 seats = 30.00 and 6,000,000 large
    tokens = 12.00, true-up 100.00 - 42.00 = 58.00. Stripe gets 12.00 + 58.00, once."""
    wall = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, at(dt.datetime(2026, 9, 3, tzinfo=dt.UTC)))
        rate(con, {"platform fee": 4900, "seats": 1000, "tokens large": 10, "minimum spend": 8990},
             rated_at=wall - dt.timedelta(hours=2))
        early = biller(con, client, now=wall).run(SEPTEMBER)
        assert (early.charges, early.new_revisions, early.calls) == (0, 0, 0)
        sb.advance_clock(clock.id, at(OCT1 - dt.timedelta(minutes=10)))   # the last minutes of the period
        last_minutes = biller(con, client, now=wall).run(SEPTEMBER)
        assert (last_minutes.charges, last_minutes.calls) == (0, 0)
        assert items_at_stripe(client, cus) == [] and ledger(con).is_empty()

        sb.advance_clock(clock.id, at(OCT1 + dt.timedelta(minutes=15)))   # ended; its invoice a draft
        draft = cycle_invoice(client, cus, OCT1)
        rate(con, {"platform fee": 4900, "seats": 3000, "tokens large": 1200, "minimum spend": 5800},
             rated_at=wall - dt.timedelta(hours=1))
        closing = biller(con, client, now=wall).run(SEPTEMBER)
        assert (closing.charges, closing.new_revisions, closing.on_draft_invoice) == (2, 2, 2)
        assert closing.billed_minor == {"usd": 1200 + 5800}
        assert items_at_stripe(client, cus) == sorted([
            (1200, draft.id, item_key("acme", SEPTEMBER, "pro", "2026-01", "tokens large", 1)),
            (5800, draft.id, item_key("acme", SEPTEMBER, "pro", "2026-01", "minimum spend", 1))])
        again = biller(con, client, now=wall).run(SEPTEMBER)
        assert (again.new_revisions, again.calls) == (0, 0)

        sb.advance_clock(clock.id, at(OCT1 + dt.timedelta(hours=2)))      # past the grace hour
        assert client.v1.invoices.retrieve(draft.id).total == draft.total + 1200 + 5800
        assert ledger(con).select("charge", "revision", "amount_minor", "status").rows() == [
            ("minimum spend", 1, 5800, "acknowledged"), ("tokens large", 1, 1200, "acknowledged")]


def test_a_period_ended_on_the_customers_test_clock_is_billed_though_the_wall_clock_has_not_reached_its_end(
        tmp_path: Path, rules_dir: Path) -> None:
    """The other way round: a clock advanced ahead of the wall clock (a demo of a month to come). The
    period has ended for the customer and Stripe keeps its invoice a draft; `rated_at` (wall time, Sep
    20) is before the period's end, which said nothing was closed: the true-up never reached the draft.
    Amounts: 4 seats x 10.00 = 40.00 of usage under pro's 100.00 minimum: a 60.00 true-up."""
    wall = dt.datetime(2026, 9, 20, tzinfo=dt.UTC)
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, at(OCT1 + dt.timedelta(minutes=15)))
        draft = cycle_invoice(client, cus, OCT1)
        rate(con, {"platform fee": 4900, "seats": 4000, "minimum spend": 6000}, rated_at=wall - dt.timedelta(minutes=5))
        run = biller(con, client, now=wall).run(SEPTEMBER)
        assert (run.charges, run.new_revisions, run.on_draft_invoice, run.needs_operator) == (1, 1, 1, 0)
        assert items_at_stripe(client, cus) == [
            (6000, draft.id, item_key("acme", SEPTEMBER, "pro", "2026-01", "minimum spend", 1))]
        assert biller(con, client, now=wall).run(SEPTEMBER).calls == 0


def test_what_was_billed_for_a_period_still_open_on_the_clock_is_not_credited(tmp_path: Path, rules_dir: Path) -> None:
    """Audit: items billed by the earlier rule (the wall clock) for periods still open on the customer's
    clock were credited in full by the next run (the main job's data: -5,427.89 USD, to be billed again
    once the periods close). A period not closed is left as billed: no target there is no credit due.
    Here October's minimum (58.00) as the earlier rule billed it on Oct 1, its period open until Nov 1."""
    wall = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    october = dt.date(2026, 10, 1)
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        sb.advance_clock(clock.id, at(OCT1 + dt.timedelta(minutes=15)))
        rate(con, {"platform fee": 4900, "seats": 3000, "tokens large": 1200, "minimum spend": 5800}, rated_at=wall)
        assert biller(con, client, now=wall).run(SEPTEMBER).new_revisions == 2
        con.execute("""INSERT INTO stripe_invoice_items SELECT * REPLACE (
                           DATE '2026-10-01' AS period_start, DATE '2026-11-01' AS period_end,
                           item_key || '-october' AS item_key, idempotency_key || '-october' AS idempotency_key,
                           stripe_invoice_item_id || '-october' AS stripe_invoice_item_id)
                       FROM stripe_invoice_items WHERE charge = 'minimum spend'""")
        run = biller(con, client, now=wall).run(october)
        assert (run.new_revisions, run.calls) == (0, 0)
        assert ledger(con).filter(pl.col("period_start") == october).select("revision", "amount_minor").rows() == [
            (1, 5800)]


def test_a_change_after_finalization_is_billed_as_its_difference_on_the_next_invoice(
        tmp_path: Path, rules_dir: Path) -> None:
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 4000, "tokens large": 700}, rated_at=OCT1 + dt.timedelta(minutes=10))
        biller(con, client).run(SEPTEMBER)
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
        september = cycle_invoice(client, cus, OCT1)
        assert september.status != "draft"

        # late usage re-rated the closed period: the true-up shrank, the filtered tokens grew, and a
        # charge no longer has a line at all (its billed amount is credited)
        rate(con, {"minimum spend": 2500, "tokens large": 900}, rated_at=OCT1 + dt.timedelta(days=3))
        second = biller(con, client).run(SEPTEMBER)
        assert (second.new_revisions, second.pending_next, second.on_draft_invoice) == (2, 2, 0)
        assert second.billed_minor == {"usd": -1500 + 200}
        pending = [(a, inv) for a, inv, _ in items_at_stripe(client, cus) if inv is None]
        assert sorted(pending) == [(-1500, None), (200, None)]
        assert client.v1.invoices.retrieve(september.id).total == september.total  # a finalized invoice stays

        rate(con, {"tokens large": 900}, rated_at=OCT1 + dt.timedelta(days=4))
        third = biller(con, client).run(SEPTEMBER)
        assert third.billed_minor == {"usd": -2500}

        sb.advance_clock(clock.id, int((NOV1 + dt.timedelta(minutes=5)).timestamp()))
        october = cycle_invoice(client, cus, NOV1)
        lines = [line.amount for line in client.v1.invoices.line_items.list(october.id, {"limit": 100}).data
                 if line.parent.type == "invoice_item_details"]
        assert sorted(lines) == [-2500, -1500, 200]
        # what Stripe billed for each charge over both invoices is its rated amount now
        by_charge = ledger(con).group_by("charge").agg(pl.col("amount_minor").sum()).sort("charge")
        assert by_charge.rows() == [("minimum spend", 0), ("tokens large", 900)]


def test_a_lost_response_is_settled_by_listing_not_billed_twice(tmp_path: Path, rules_dir: Path) -> None:
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        # Stripe applies the first call and the answer is lost; every retry is dropped unanswered
        sb.inject_fault("lost_response", path="/v1/invoiceitems", method="POST", count=1)
        sb.inject_fault("drop", path="/v1/invoiceitems", method="POST", count=50)
        first = biller(con, client).run(SEPTEMBER)
        assert (first.acknowledged, first.unknown) == (0, 1)
        assert ledger(con)["status"].to_list() == ["unknown"]
        sb.clear_faults()

        second = biller(con, client).run(SEPTEMBER)
        assert (second.settled_by_listing, second.new_revisions, second.calls) == (1, 0, 0)
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [4000]
        assert ledger(con)[["status", "resolved_by"]].rows() == [("acknowledged", "listing")]


def test_a_row_whose_key_expired_unseen_is_billed_again_in_the_same_run(tmp_path: Path, rules_dir: Path) -> None:
    """Every call was dropped (nothing applied) and the row left `unknown`; the next run comes a day
    later, past the key's 20 h, and Stripe holds no such item. The row became `failed` but its charge
    was not planned again until yet another run: that run billed nothing and exited 5 (audit)."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        minimum_left_unknown(sb, con, client, clock)
        sb.clear_faults()

        later = biller(con, client, now=dt.datetime(2026, 11, 27, 1, tzinfo=dt.UTC)).run(SEPTEMBER)
        assert (later.failed, later.unknown, later.new_revisions, later.acknowledged, later.needs_operator) == (0, 0, 1, 1, 0)
        assert ledger(con)[["revision", "status"]].rows() == [(1, "failed"), (2, "acknowledged")]
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [4000]


def test_an_item_refused_by_a_finalized_invoice_goes_to_the_next_one(tmp_path: Path, rules_dir: Path) -> None:
    """The draft was chosen, the call's outcome was lost (nothing applied), and the invoice was
    finalized before the retry: Stripe refuses the item there; it is billed once, pending."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        draft = cycle_invoice(client, cus, OCT1)
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        sb.inject_fault("drop", path="/v1/invoiceitems", method="POST", count=50)
        assert biller(con, client).run(SEPTEMBER).unknown == 1
        assert ledger(con)["target_invoice_id"].to_list() == [draft.id]
        sb.clear_faults()
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))

        run = biller(con, client, now=dt.datetime(2026, 10, 1, 3, tzinfo=dt.UTC)).run(SEPTEMBER)
        assert (run.acknowledged, run.pending_next, run.failed) == (1, 1, 0)
        rows = ledger(con).select("revision", "status", "target_invoice_id").rows()
        assert rows == [(1, "failed", draft.id), (2, "acknowledged", None)]
        assert [(a, inv) for a, inv, _ in items_at_stripe(client, cus)] == [(4000, None)]


def test_customers_not_in_stripe_are_counted_not_billed(tmp_path: Path, rules_dir: Path) -> None:
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10), customer="initech")
        run = biller(con, client).run(SEPTEMBER)
        assert (run.unmapped, run.calls, run.new_revisions, run.needs_operator) == (1, 0, 0, 1)


def test_keys_are_deterministic_and_within_stripes_limits() -> None:
    key = item_key("acme", SEPTEMBER, "pro", "2026-01", "minimum spend", 2)
    assert key == "acme|2026-09-01|pro|2026-01|minimum spend|r2"
    long = item_key("c" * 300, SEPTEMBER, "pro", "2026-01", "minimum spend", 1)
    assert long.startswith("h-") and len(long) == 66 and long == item_key("c" * 300, SEPTEMBER, "pro", "2026-01",
                                                                         "minimum spend", 1)
    assert idempotency_key(key, "in_1") != idempotency_key(key, None)
    assert len(idempotency_key(long, "in_" + "x" * 24)) <= 255


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(targets=st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=4),
       faults=st.lists(st.sampled_from(["none", "lost_response", "server_error", "drop"]), min_size=4, max_size=4))
def test_stripes_items_sum_to_the_rated_amount_under_any_changes_and_faults(
        tmp_path_factory: pytest.TempPathFactory, rules_dir: Path, targets: list[int], faults: list[str]) -> None:
    """Invariant: after a run that settles, the items Stripe holds for a charge sum to its rated amount."""
    tmp_path = tmp_path_factory.mktemp("items")
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        for n, (target, fault) in enumerate(zip(targets, faults)):
            rate(con, {"minimum spend": target}, rated_at=OCT1 + dt.timedelta(minutes=10 + n))
            if fault != "none":
                sb.inject_fault(fault, path="/v1/invoiceitems", method="POST", count=1)
            biller(con, client).run(SEPTEMBER)
            sb.clear_faults()
        settled = biller(con, client).run(SEPTEMBER)
        assert settled.needs_operator == 0
        assert sum(a for a, _, _ in items_at_stripe(client, cus)) == targets[-1]


def test_the_command_bills_and_says_what_it_did(tmp_path: Path, rules_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        con.close()
        monkeypatch.setenv("STRIPE_API_KEY", sb.api_key)
        monkeypatch.setenv("STRIPE_API_BASE", sb.base_url)
        wh = str(tmp_path / "wh.duckdb")
        runner = CliRunner()
        ok = runner.invoke(cli, ["stripe", "invoice-items", "--period", "2026-09", "--warehouse", wh, "--rate", "0"])
        assert ok.exit_code == 0, ok.output
        assert "1 acknowledged (1 on the period's draft invoice" in ok.output and "billed 4000 usd" in ok.output
        bad = runner.invoke(cli, ["stripe", "invoice-items", "--period", "Sept", "--warehouse", wh])
        assert bad.exit_code == EXIT_USAGE and "'Sept' is not a month" in bad.output
        with warehouse.open_warehouse(wh) as again:
            rate(again, {"minimum spend": 1000}, rated_at=OCT1 + dt.timedelta(days=2))
        # a 500 that Stripe says not to retry: the item may have been stored, so it is unknown
        sb.inject_fault("server_error", path="/v1/invoiceitems", method="POST", should_retry=False)
        failed = runner.invoke(cli, ["stripe", "invoice-items", "--period", "2026-09", "--warehouse", wh, "--rate", "0"])
        assert failed.exit_code == EXIT_EXTERNAL, failed.output
        assert "unknown invoice items need a look" in failed.output and "Traceback" not in failed.output


def test_an_item_stripe_refuses_is_tried_once_a_run(tmp_path: Path, rules_dir: Path) -> None:
    """A refusal that is not the invoice's (here: the customer is gone at Stripe) is `failed`, and
    reported; the next run tries once more (a new revision), never in a loop."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        client.v1.customers.delete(report.customers[0]["stripe_customer_id"])
        first = biller(con, client).run(SEPTEMBER)
        assert (first.failed, first.acknowledged, first.needs_operator) == (1, 0, 1)
        assert ledger(con)[["revision", "status", "last_http_status"]].rows() == [(1, "failed", 404)]
        biller(con, client).run(SEPTEMBER)
        assert ledger(con)[["revision", "status"]].rows() == [(1, "failed"), (2, "failed")]


def test_a_ledger_restored_from_a_snapshot_does_not_bill_twice(tmp_path: Path, rules_dir: Path) -> None:
    """docs/durability.md's restore: the ledger loses the rows written after the snapshot, though
    Stripe holds their items. The same revision's key now names another destination (the invoice is
    finalized), so only the look-up by metering_item keeps the charge from being billed twice; and a
    charge re-rated since is billed its difference from what Stripe holds (audit: 5100 billed twice)."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 5100, "tokens large": 700}, rated_at=OCT1 + dt.timedelta(minutes=10))
        biller(con, client).run(SEPTEMBER)
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))   # finalized
        con.execute("DELETE FROM stripe_invoice_items")                              # the restore
        rate(con, {"minimum spend": 6000, "tokens large": 700}, rated_at=OCT1 + dt.timedelta(days=1))

        run = biller(con, client).run(SEPTEMBER)
        assert run.settled_by_listing == 2 and run.needs_operator == 0
        amounts = sorted(a for a, _, _ in items_at_stripe(client, cus))
        assert amounts == [700, 900, 5100]                  # one item each; the minimum's difference, 900
        rows = ledger(con).select("charge", "revision", "amount_minor", "resolved_by").rows()
        assert rows == [("minimum spend", 1, 5100, "listing"), ("minimum spend", 2, 900, "response"),
                        ("tokens large", 1, 700, "listing")]
        assert "Stripe held this item with 5100, the ledger 6000" in ledger(con)["last_error"][0]


@pytest.mark.parametrize("restored", ["nothing", "the failed revision as sent"])
def test_a_restored_ledger_does_not_bill_again_a_charge_whose_earlier_revision_failed(
        tmp_path: Path, rules_dir: Path, restored: str) -> None:
    """After the snapshot, revision 1 of the 40.00 minimum failed (every call dropped, then its key
    expired) and revision 2 billed it. The restored ledger lost both rows (or holds revision 1 as it
    stood when the snapshot was taken: sent, its key young again by the restored clock), so a new
    revision 1 was planned and sent, and the customer paid 80.00 for a 40.00 charge (m22a audit). Stripe's
    item names the charge in its metadata: it is recorded as revision 2, and nothing more is billed."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        minimum_left_unknown(sb, con, client, clock)
        snapshot = ledger(con)
        sb.clear_faults()
        biller(con, client, now=dt.datetime(2026, 11, 27, 1, tzinfo=dt.UTC)).run(SEPTEMBER)   # 25 h on
        assert ledger(con).select("revision", "status").rows() == [(1, "failed"), (2, "acknowledged")]
        con.execute("DELETE FROM stripe_invoice_items")                                         # the restore
        if restored != "nothing":
            warehouse.insert_frame(con, "stripe_invoice_items", snapshot)

        run = biller(con, client, now=dt.datetime(2026, 11, 26, 1, tzinfo=dt.UTC)).run(SEPTEMBER)
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [4000]
        assert (run.calls, run.needs_operator) == (0, 0)
        rows = ledger(con).sort("revision").select("revision", "status", "amount_minor", "target_minor").rows()
        assert rows == [(1, "failed", 4000, 4000), (2, "acknowledged", 4000, 4000)]
        assert "superseded: Stripe holds revision 2" in ledger(con).sort("revision")["last_error"][0]
        assert biller(con, client, now=dt.datetime(2026, 11, 26, 2, tzinfo=dt.UTC)).run(SEPTEMBER).calls == 0


def test_an_ended_subscriptions_charge_is_blocked_for_an_operator_then_found_when_invoiced_by_hand(
        tmp_path: Path, rules_dir: Path) -> None:
    """A pending item for a canceled subscription would wait for an invoice that never comes, while the
    ledger said billed (first audit). The row is `blocked` (no call), also once a sync has dropped the
    ended subscription from the map (second audit: it went pending with no subscription); the run needs an
    operator. The operator invoices it by hand with the row's key in the item's metadata: the next run
    finds it and records it, and nothing is billed twice (second audit: a re-plan billed it again)."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, sub = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        client.v1.subscriptions.update(sub, {"cancel_at_period_end": True})
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))   # ended, invoice final
        assert client.v1.subscriptions.retrieve(sub).status == "canceled"
        rate(con, {"minimum spend": 5100}, rated_at=OCT1 + dt.timedelta(hours=1, minutes=30))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.blocked, run.acknowledged, run.calls, run.needs_operator) == (1, 0, 0, 1)
        assert items_at_stripe(client, cus) == []
        [row] = ledger(con).rows(named=True)
        assert row["status"] == "blocked" and "no live subscription" in row["last_error"]

        con.execute("UPDATE stripe_customer_map SET subscription_id = NULL")   # a later sync skips the ended one
        again = biller(con, client).run(SEPTEMBER)
        assert (again.blocked, again.calls, again.new_revisions) == (1, 0, 0) and items_at_stripe(client, cus) == []

        client.v1.invoice_items.create({"customer": cus, "amount": 5100, "currency": "usd",
                                        "metadata": {"metering_item": row["item_key"]}})   # by hand
        found = biller(con, client).run(SEPTEMBER)
        assert (found.settled_by_listing, found.needs_operator, found.calls) == (1, 0, 0)
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [5100]
        assert ledger(con)[["status", "resolved_by"]].rows() == [("acknowledged", "listing")]


@pytest.mark.parametrize("recorded", [True, False], ids=["version-recorded", "version-never-rated"])
def test_a_usage_charge_of_a_version_the_subscription_is_not_on_is_not_billed_twice(
        tmp_path: Path, rules_dir: Path, recorded: bool) -> None:
    """Second audit: pro's 2026-10 version (from Oct 15) prices API calls per region, which Stripe
    cannot; the Stripe subscription stays on 2026-01, whose API-calls price bills all of October's calls.
    Billing 'api calls us' as an item too billed the same calls twice. Such a usage charge is counted
    and left to an operator; the period's minimum (no meter: Stripe prices it under no version) is billed.
    A subscription's version rating never recorded (its meters unknown) is taken to price the meter."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))   # September closed
        con.execute("UPDATE stripe_customer_map SET plan = 'pro', plan_version = '2026-01'")
        if recorded:
            record_versions(con, rules, ("pro", "2026-01"), ("pro", "2026-10"))
        rate(con, {"minimum spend": 1500}, rated_at=OCT1 + dt.timedelta(minutes=10))
        rated_on_version_2026_10(con, filtered=True)
        run = biller(con, client).run(SEPTEMBER)
        assert (run.other_version, run.acknowledged, run.needs_operator) == (1, 1, 1)
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [1500]


def test_a_usage_charge_of_a_version_the_subscription_is_not_on_is_billed_when_its_meter_has_no_stripe_price(
        tmp_path: Path, rules_dir: Path) -> None:
    """Fourth audit: acme moved from pro to scale on Sep 16; its Stripe subscription stays on pro 2026-01,
    which has no price on the tokens meter (both its token charges are filtered: not expressible). Scale's
    filtered token charges were set aside as `other_version` ("Stripe bills that usage at the
    subscription's price"), and nothing billed them. They are billed as items, as pro's own are. Amounts
    from rating_rules/plans: pro 2026-01 tokens large, per unit: 1,000,000 x 0.000002 = 2.00; scale
    tokens large, volume (under 10,000,000: first tier): 3,000,000 x 0.0000015 = 4.50; scale tokens
    small, per unit: 2,500,000 x 0.0000004 = 1.00."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        assert (report.customers[0]["plan"], report.customers[0]["plan_version"]) == ("pro", "2026-01")
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))   # September closed
        record_versions(con, rules, ("pro", "2026-01"), ("scale", "2026-01"))
        moved = dt.date(2026, 9, 16)
        lines = [("pro", SEPTEMBER, moved, "tokens large", 1_000_000, 200),
                 ("scale", moved, OCT1.date(), "tokens large", 3_000_000, 450),
                 ("scale", moved, OCT1.date(), "tokens small", 2_500_000, 100)]
        for n, (plan, start, end, charge, tokens, minor) in enumerate(lines):
            con.execute(
                "INSERT INTO rated_usage (customer_id, period_start, period_end, segment_start, segment_end, plan, "
                "plan_version, rules_hash, charge_id, charge, model, meter, quantity, amount, amount_minor, currency, "
                "rounding, rated_at) VALUES ('acme', ?, ?, ?, ?, ?, '2026-01', 'h', ?, ?, 'per_unit', 'tokens', ?, ?, "
                "?, 'usd', 'half_up', ?)",
                [SEPTEMBER, OCT1.date(), start, end, plan, n, charge, tokens, minor / 100, minor,
                 OCT1 + dt.timedelta(minutes=10)])

        run = biller(con, client).run(SEPTEMBER)
        assert (run.other_version, run.new_revisions, run.acknowledged, run.needs_operator) == (0, 3, 3, 0)
        assert run.billed_minor == {"usd": 200 + 450 + 100}
        assert sorted((a, key) for a, _, key in items_at_stripe(client, cus)) == [
            (100, item_key("acme", SEPTEMBER, "scale", "2026-01", "tokens small", 1)),
            (200, item_key("acme", SEPTEMBER, "pro", "2026-01", "tokens large", 1)),
            (450, item_key("acme", SEPTEMBER, "scale", "2026-01", "tokens large", 1))]


def test_a_charge_stripe_can_price_since_is_not_credited(tmp_path: Path, rules_dir: Path) -> None:
    """A later catalog sync no longer finds the filtered tokens not expressible (say Stripe prices
    them now): its items stay, and nothing is credited; Stripe's meters will not bill a closed period."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 4000, "tokens large": 700}, rated_at=OCT1 + dt.timedelta(minutes=10))
        biller(con, client).run(SEPTEMBER)
        con.execute("DELETE FROM stripe_catalog_findings WHERE our_key = 'pro|2026-01|tokens large'")
        again = biller(con, client).run(SEPTEMBER)
        assert (again.new_revisions, again.calls) == (0, 0)
        assert sorted(a for a, _, _ in items_at_stripe(client, cus)) == [700, 4000]


def _late_window(con: Any, customer: str, day: dt.date) -> None:
    """A push window of `customer` marked late: usage the period's Stripe invoice never carried."""
    start = dt.datetime.combine(day, dt.time(0), dt.UTC)
    con.execute(
        "INSERT INTO stripe_push_ledger (customer_id, meter, window_start, window_end, revision, value, identifier, "
        "idempotency_key, status, created_at, window_kind, event_date, event_name, event_timestamp, updated_at) "
        "VALUES (?, 'seats', ?, ?, 2, 6, 'id', 'key', 'late', ?, 'day', ?, 'metering_seats', ?, ?)",
        [customer, start, start + dt.timedelta(days=1), start, day, start, start])


def test_a_credit_in_a_period_with_usage_stripe_never_billed_is_held(tmp_path: Path, rules_dir: Path) -> None:
    """Reviewer's case: pro, 3 seats pushed, a 70.00 true-up billed; 3 more seats arrive after the
    invoice was finalized (pushed late: Stripe never bills them). The rating's true-up falls to 40.00;
    crediting 30.00 would leave 119.00 paid of 149.00 rated. The credit is held for an operator, while
    a period without late usage is credited as before."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"platform fee": 4900, "seats": 3000, "minimum spend": 7000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        biller(con, client).run(SEPTEMBER)
        _late_window(con, "acme", dt.date(2026, 9, 29))
        rate(con, {"platform fee": 4900, "seats": 6000, "minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(days=2))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.held, run.new_revisions, run.calls, run.needs_operator) == (1, 0, 0, 1)
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [7000]

        con.execute("DELETE FROM stripe_push_ledger")        # no usage Stripe missed: the credit is right
        credited = biller(con, client).run(SEPTEMBER)
        assert (credited.held, credited.billed_minor) == (0, {"usd": -3000})


def test_the_command_names_unmapped_customers_and_held_credits(tmp_path: Path, rules_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10), customer="initech")
        con.close()
        monkeypatch.setenv("STRIPE_API_KEY", sb.api_key)
        monkeypatch.setenv("STRIPE_API_BASE", sb.base_url)
        result = CliRunner().invoke(cli, ["stripe", "invoice-items", "--period", "2026-09", "--warehouse",
                                          str(tmp_path / "wh.duckdb"), "--rate", "0"])
        assert result.exit_code == EXIT_EXTERNAL
        assert "1 charge(s) of customers not synced to Stripe: run `metering stripe sync`" in result.output
        assert "failed" not in result.output.split("error:")[-1]


def test_differences_that_net_to_no_credit_go_through_in_a_period_with_late_usage(
        tmp_path: Path, rules_dir: Path) -> None:
    """Second audit: late token usage lifts 'tokens large' (billed by the engine) by 20.00 and lowers the
    true-up by as much. Holding the credit alone billed +20.00 (11000 for 9000 rated); the period's
    differences net to nothing, so both go through."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"tokens large": 1000, "minimum spend": 8000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        biller(con, client).run(SEPTEMBER)
        _late_window(con, "acme", dt.date(2026, 9, 29))
        rate(con, {"tokens large": 3000, "minimum spend": 6000}, rated_at=OCT1 + dt.timedelta(days=2))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.held, run.new_revisions, run.billed_minor) == (0, 2, {"usd": 0})
        assert sum(a for a, _, _ in items_at_stripe(client, cus)) == 9000


def test_a_row_planned_under_an_older_rating_is_topped_up_in_the_same_run(tmp_path: Path, rules_dir: Path) -> None:
    """Found by the SIGKILL test: a run killed after planning left a pending row of 5000; the period was
    re-rated to 3000 before the next run, which sent that row and stopped, leaving Stripe 2000 over
    until a later run. The run now plans again the charges it billed: 5000, then -2000, in one run."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 5000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        interrupted = biller(con, client)
        interrupted._plan(SEPTEMBER, InvoiceItemsReport(SEPTEMBER))         # killed here, before any call
        rate(con, {"minimum spend": 3000}, rated_at=OCT1 + dt.timedelta(minutes=11))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.acknowledged, run.needs_operator) == (2, 0)
        assert sorted(a for a, _, _ in items_at_stripe(client, cus)) == [-2000, 5000]




def test_the_hold_weighs_the_whole_periods_differences(tmp_path: Path, rules_dir: Path) -> None:
    """Third audit: a stale +500 (planned by a killed run) is sent; the second round saw only the
    tokens charge (+500 more, net positive) and billed it, although the period's differences came to a
    credit (-1500): 10000 on Stripe for 8000 rated. The hold now weighs the whole period every round."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"tokens large": 1000, "minimum spend": 8000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        biller(con, client).run(SEPTEMBER)
        rate(con, {"tokens large": 1500, "minimum spend": 8000}, rated_at=OCT1 + dt.timedelta(days=1))
        biller(con, client)._plan(SEPTEMBER, InvoiceItemsReport(SEPTEMBER))   # killed: +500 left pending
        _late_window(con, "acme", dt.date(2026, 9, 29))
        rate(con, {"tokens large": 2000, "minimum spend": 6000}, rated_at=OCT1 + dt.timedelta(days=2))
        run = biller(con, client).run(SEPTEMBER)
        assert sorted(a for a, _, _ in items_at_stripe(client, cus)) == [500, 1000, 8000]
        assert run.held == 2 and run.needs_operator >= 2


def test_a_resend_to_a_subscription_canceled_meanwhile_is_blocked(tmp_path: Path, rules_dir: Path) -> None:
    """Third audit: a row left unknown (every call dropped) was resent under its key, pending for the
    subscription, after that subscription was canceled: acknowledged, on no invoice ever, run clean."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, sub = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))   # invoice final, sub live
        rate(con, {"minimum spend": 5000}, rated_at=OCT1 + dt.timedelta(hours=1))
        sb.inject_fault("drop", path="/v1/invoiceitems", method="POST", count=50)
        assert biller(con, client).run(SEPTEMBER).unknown == 1
        sb.clear_faults()
        client.v1.subscriptions.cancel(sub)
        run = biller(con, client, now=NOW + dt.timedelta(hours=1)).run(SEPTEMBER)
        assert (run.blocked, run.acknowledged, run.needs_operator) == (1, 0, 1)
        assert items_at_stripe(client, cus) == []
        assert ledger(con).select("status", "idempotency_key").rows() == [("blocked", None)]


def test_a_subscription_of_unknown_version_keeps_usage_charges_for_an_operator(tmp_path: Path, rules_dir: Path) -> None:
    """Third audit: a subscription without our metadata (not created by our sync) was mapped to the
    version in force at a later sync (2026-10), so pro 2026-10's per-region API calls were billed as
    items on top of the subscription's own API-calls price. Its version is now unknown (NULL): usage
    charges wait for an operator, the minimum is billed."""
    from metering.customers import load_customers
    from metering.stripe import catalog

    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, sub = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        client.v1.subscriptions.update(sub, {"metadata": {"plan": "", "plan_version": ""}})
        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 20, tzinfo=dt.UTC).timestamp()))
        catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules), test_clock=clock.id)
        assert catalog.customer_map(con).select("subscription_id", "plan_version").rows() == [(sub, None)]
        rate(con, {"minimum spend": 1500}, rated_at=OCT1 + dt.timedelta(minutes=10))
        rated_on_version_2026_10(con, filtered=False)
        run = biller(con, client).run(SEPTEMBER)
        assert (run.other_version, run.acknowledged) == (1, 1)
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [1500]


def test_a_customer_whose_subscription_ended_gets_a_new_one_from_the_sync(tmp_path: Path, rules_dir: Path) -> None:
    """Third audit: the blocked row's advice is to give the customer a subscription, which the sync
    does; it failed with an IdempotencyError (its key was one per Stripe customer)."""
    from metering.customers import load_customers
    from metering.stripe import catalog

    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        sub = report.customers[0]["subscription_id"]
        client.v1.subscriptions.update(sub, {"cancel_at_period_end": True})
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
        catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules), create_customers=True,
                             test_clock=clock.id)
        [row] = catalog.customer_map(con).rows(named=True)
        assert row["subscription_id"] not in (None, sub)
        assert client.v1.subscriptions.retrieve(row["subscription_id"]).status != "canceled"


def _pending_true_up(sb: Any, con: Any, client: Any, clock: Any) -> None:
    """September's invoice is final, then September closes with a 40.00 true-up: billed pending, for
    the subscription's next invoice."""
    sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
    rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(hours=1))
    run = biller(con, client, now=OCT1 + dt.timedelta(days=1)).run(SEPTEMBER)
    assert (run.pending_next, run.needs_operator) == (1, 0)


def test_an_item_pending_for_a_subscription_that_ends_is_blocked_never_sent_twice(
        tmp_path: Path, rules_dir: Path) -> None:
    """Fourth audit: an item acknowledged pending was never looked at again. The customer canceled in
    October, so no invoice carried September's 40.00 true-up, yet every run was clean and the ledger
    said acknowledged. It is blocked for an operator, the item left at Stripe and nothing sent again;
    deleted there by the operator, the charge is billed again (blocked: no live subscription)."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, sub = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        _pending_true_up(sb, con, client, clock)
        [item] = client.v1.invoice_items.list({"customer": cus}).data
        client.v1.subscriptions.cancel(sub)
        sb.advance_clock(clock.id, int((NOV1 + dt.timedelta(days=40)).timestamp()))
        later = dt.datetime(2026, 12, 12, tzinfo=dt.UTC)

        for _ in range(2):   # re-examined each run, unchanged
            run = biller(con, client, now=later).run(SEPTEMBER)
            assert (run.blocked, run.calls, run.new_revisions, run.needs_operator) == (1, 0, 0, 1)
            [row] = ledger(con).rows(named=True)
            assert (row["status"], row["amount_minor"], row["stripe_invoice_item_id"], row["stripe_invoice_id"]) == (
                "blocked", 4000, item.id, None)
            assert f"pending for subscription {sub}, which has ended" in row["last_error"]
            assert items_at_stripe(client, cus) == [(4000, None, row["item_key"])]

        client.v1.invoice_items.delete(item.id)   # the operator's choice: bill it elsewhere
        run = biller(con, client, now=later).run(SEPTEMBER)
        assert (run.blocked, run.calls, run.needs_operator) == (1, 0, 1)
        assert ledger(con).select("revision", "amount_minor", "status").rows() == [
            (1, 4000, "failed"), (2, 4000, "blocked")]
        assert items_at_stripe(client, cus) == []


def test_an_item_pending_at_stripe_is_recorded_on_the_invoice_that_takes_it(tmp_path: Path, rules_dir: Path) -> None:
    """The subscription lives on: October's invoice takes the pending item, and the next run records it."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        _pending_true_up(sb, con, client, clock)
        sb.advance_clock(clock.id, int((NOV1 + dt.timedelta(minutes=5)).timestamp()))
        october = cycle_invoice(client, cus, NOV1)
        run = biller(con, client, now=NOV1 + dt.timedelta(hours=1)).run(SEPTEMBER)
        assert (run.calls, run.new_revisions, run.needs_operator) == (0, 0, 0)
        assert ledger(con).select("status", "amount_minor", "stripe_invoice_id").rows() == [
            ("acknowledged", 4000, october.id)]


def test_an_item_deleted_at_stripe_while_pending_is_billed_again(tmp_path: Path, rules_dir: Path) -> None:
    """Acknowledged pending, then deleted at Stripe before any invoice took it: nothing bills it, so a
    new revision does, pending for the live subscription."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        _pending_true_up(sb, con, client, clock)
        [item] = client.v1.invoice_items.list({"customer": cus}).data
        client.v1.invoice_items.delete(item.id)
        run = biller(con, client, now=OCT1 + dt.timedelta(days=2)).run(SEPTEMBER)
        assert (run.new_revisions, run.pending_next, run.billed_minor, run.needs_operator) == (1, 1, {"usd": 4000}, 0)
        assert ledger(con).select("revision", "status").rows() == [(1, "failed"), (2, "acknowledged")]
        assert [(a, inv) for a, inv, _ in items_at_stripe(client, cus)] == [(4000, None)]


def test_a_key_stripe_holds_with_other_parameters_leaves_the_row_unknown(tmp_path: Path, rules_dir: Path) -> None:
    """Stripe answers a key reused with other parameters with an error of type `idempotency_error`
    and no code: something was applied under it, so the row is `unknown` (for the look-up), not
    `failed` and billed again under a new key. The check read the error's code, so it never fired."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, sub = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))   # pending for the subscription
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(hours=1))
        key = idempotency_key(item_key("acme", SEPTEMBER, "pro", "2026-01", "minimum spend", 1), sub)
        client.v1.invoice_items.create({"customer": cus, "amount": 100, "currency": "usd"}, {"idempotency_key": key})
        run = biller(con, client, now=OCT1 + dt.timedelta(hours=3)).run(SEPTEMBER)
        assert (run.unknown, run.failed, run.acknowledged) == (1, 0, 0)
        assert ledger(con).select("revision", "status", "last_http_status", "idempotency_key").rows() == [
            (1, "unknown", 400, key)]
        assert [i.amount for i in client.v1.invoice_items.list({"customer": cus}).data] == [100]   # nothing sent again

"""Pulls against the real local Stripe sandbox through the official SDK (over loopback HTTP).

One customer on a test clock from 2026-10-01, api_calls (sum, day windows) at 0.2 cents per call and
seats (last). Usage: api_calls 1000 on Oct 1 + 500 on Oct 2; seats 5 on Oct 3, then 7 on Oct 5.
Stripe's invoice for October: 1500 x 0.2 = 300 cents for api_calls, 7 x 1000 = 7000 for seats.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import polars as pl

from metering import warehouse
from metering.reconcile.pulls import pull_stripe_state
from metering.reconcile.settings import ReconcileSettings
from metering.warehouse import insert_frame

MONTH = dt.date(2026, 10, 1)


def _ts(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def _stripe_month(client) -> tuple[str, str]:
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts("2026-10-01T00:00:00")})
    customer = client.v1.customers.create({"name": "Acme", "metadata": {"customer_id": "cus_1"}, "test_clock": clock.id})
    items = []
    for meter, formula, price in (("api_calls", "sum", {"unit_amount_decimal": "0.2"}), ("seats", "last", {"unit_amount": 1000})):
        m = client.v1.billing.meters.create({
            "display_name": meter, "event_name": f"metering_{meter}", "default_aggregation": {"formula": formula},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"}, "event_time_window": "day"})
        product = client.v1.products.create({"name": meter})
        p = client.v1.prices.create({"currency": "usd", "product": product.id, **price,
                                     "recurring": {"interval": "month", "usage_type": "metered", "meter": m.id}})
        items.append({"price": p.id})
    client.v1.subscriptions.create({"customer": customer.id, "items": items, "metadata": {"customer_id": "cus_1"},
                                    "billing_cycle_anchor": _ts("2026-11-01T00:00:00")})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-06T00:00:00")})
    for event_name, value, when in (("metering_api_calls", "1000", "2026-10-01T10:00:00"),
                                    ("metering_api_calls", "500", "2026-10-02T10:00:00"),
                                    ("metering_seats", "5", "2026-10-03T10:00:00"),
                                    ("metering_seats", "7", "2026-10-05T10:00:00")):
        client.v1.billing.meter_events.create({"event_name": event_name, "timestamp": _ts(when),
                                               "payload": {"stripe_customer_id": customer.id, "value": value},
                                               "identifier": f"{event_name}-{when}"})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-11-01T02:00:00")})
    return customer.id, clock.id


def _periods(con) -> None:
    insert_frame(con, "invoice_previews", pl.DataFrame([dict(
        customer_id="cus_1", period_start=dt.date(2026, 10, 1), period_end=dt.date(2026, 11, 1), currency="usd",
        total_minor=7300, total=D("73.00"), lines=2, rated_at=dt.datetime(2026, 11, 2, tzinfo=dt.UTC))]).with_columns(
        pl.col("total").cast(pl.Decimal(38, 2))))


def test_pull_summaries_invoices_and_lines(stripe_sandbox, isolated_env):
    client = stripe_sandbox.client()
    cus, _ = _stripe_month(client)
    with warehouse.open_warehouse() as con:
        _periods(con)
        result = pull_stripe_state(con, client, MONTH, meters=["api_calls", "seats"],
                                   settings=ReconcileSettings(settle_seconds=0))
        again = pull_stripe_state(con, client, MONTH, meters=["api_calls", "seats"],
                                  settings=ReconcileSettings(settle_seconds=0))
        stored = con.execute("SELECT count(*) FROM stripe_meter_summaries").fetchone()[0]
    s = result.summaries
    period = {r["meter"]: r["aggregated_value"] for r in s.filter(grain="period").iter_rows(named=True)}
    assert period == {"api_calls": D(1500), "seats": D(7)}
    days = s.filter(grain="day", meter="api_calls").filter(pl.col("aggregated_value") != 0)
    assert [(r["window_start"].date(), r["aggregated_value"]) for r in days.iter_rows(named=True)] == [
        (dt.date(2026, 10, 1), D(1000)), (dt.date(2026, 10, 2), D(500))]
    assert set(s["stripe_customer_id"]) == {cus} and set(s["status"]) == {"settled"}
    assert set(s.filter(meter="seats")["formula"]) == {"last"}

    # the subscription_create invoice carries empty (zero-length, zero-amount) metered lines too
    assert result.lines.filter(pl.col("period_start") == pl.col("period_end"))["amount"].to_list() == [0, 0]
    cycle = result.lines.filter(pl.col("meter").is_not_null(), pl.col("period_start") < pl.col("period_end"))
    got = {r["meter"]: (r["quantity_decimal"], r["amount"]) for r in cycle.iter_rows(named=True)}
    assert got == {"api_calls": (D(1500), 300), "seats": (D(7), 7000)}
    assert set(cycle["customer_id"]) == {"cus_1"}
    closing = result.invoices.filter(pl.col("invoice_id") == cycle["invoice_id"][0]).row(0, named=True)
    assert (closing["customer_id"], closing["total"], closing["status"] in ("open", "paid")) == ("cus_1", 7300, True)
    # Stripe sets auto_advance false once an invoice is paid, void or uncollectible; an open one keeps it
    assert closing["auto_advance"] is (closing["status"] == "open")
    # a second pull replaces the month, never duplicates
    assert stored == s.height == again.summaries.height
    assert result.api_calls > 0


def test_the_next_periods_first_hour_is_not_in_this_periods_summary(stripe_sandbox, isolated_env):
    """Summaries are read over [period start, period end): usage at Nov 1 00:30 (99 calls, 9 seats) is
    November's. A pull reading a day past the end (a mutation audit's survivor) counted it in October:
    api_calls 1599 and seats 9 against the 1500 and 7 Stripe invoices for October."""
    client = stripe_sandbox.client()
    cus, _ = _stripe_month(client)
    for event_name, value in (("metering_api_calls", "99"), ("metering_seats", "9")):
        client.v1.billing.meter_events.create({"event_name": event_name, "timestamp": _ts("2026-11-01T00:30:00"),
                                               "payload": {"stripe_customer_id": cus, "value": value},
                                               "identifier": f"{event_name}-november"})
    with warehouse.open_warehouse() as con:
        _periods(con)
        result = pull_stripe_state(con, client, MONTH, meters=["api_calls", "seats"],
                                   settings=ReconcileSettings(settle_seconds=0))
    period = result.summaries.filter(grain="period")
    assert {r["meter"]: r["aggregated_value"] for r in period.iter_rows(named=True)} == {
        "api_calls": D(1500), "seats": D(7)}
    assert set(period["window_end"]) == {dt.datetime(2026, 11, 1, tzinfo=dt.UTC)}


def test_an_invoice_item_line_keeps_its_item_id(stripe_sandbox, isolated_env):
    """An invoice item put on the October cycle invoice while Stripe keeps it a draft: its line has no
    price meter and the item's period, and the pull keeps its item id (parent.invoice_item_details) and
    the engine's key from the metadata Stripe copied onto the line."""
    client = stripe_sandbox.client()
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts("2026-10-01T00:00:00")})
    customer = client.v1.customers.create({"metadata": {"customer_id": "cus_1"}, "test_clock": clock.id})
    product = client.v1.products.create({"name": "seat"})
    price = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 1000,
                                     "recurring": {"interval": "month"}})
    client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}],
                                    "metadata": {"customer_id": "cus_1"},
                                    "billing_cycle_anchor": _ts("2026-11-01T00:00:00")})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-11-01T00:30:00")})
    draft = next(client.v1.invoices.list({"customer": customer.id, "status": "draft"}).auto_paging_iter())
    item = client.v1.invoice_items.create({
        "customer": customer.id, "invoice": draft.id, "amount": 4000, "currency": "usd",
        "period": {"start": _ts("2026-10-01T00:00:00"), "end": _ts("2026-11-01T00:00:00")},
        "metadata": {"metering_item": "cus_1|2026-10-01|pro|2026-01|minimum|r1"}})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-11-01T02:00:00")})
    with warehouse.open_warehouse() as con:
        _periods(con)
        result = pull_stripe_state(con, client, MONTH, meters=[], settings=ReconcileSettings(settle_seconds=0))
        stored = con.execute("SELECT line_id, invoice_item, metering_item FROM stripe_invoice_lines_api "
                             "WHERE invoice_item IS NOT NULL").fetchall()
    on_draft = result.lines.filter(pl.col("invoice_id") == draft.id).sort("amount")
    assert on_draft.select("amount", "meter", "invoice_item", "period_start", "period_end").rows() == [
        (1000, None, None, dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
         dt.datetime(2026, 11, 30, 23, 59, 59, tzinfo=dt.UTC)),
        (4000, None, item.id, dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, tzinfo=dt.UTC))]
    assert stored == [(on_draft["line_id"][1], item.id, "cus_1|2026-10-01|pro|2026-01|minimum|r1")]


def test_settle_guard_marks_pending_after_a_recent_push(stripe_sandbox, isolated_env):
    client = stripe_sandbox.client()
    _stripe_month(client)
    now = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        _periods(con)
        con.execute(
            """INSERT INTO stripe_push_ledger (customer_id, meter, window_start, window_end, revision, value, identifier,
               idempotency_key, status, attempts, last_attempt_at, created_at, window_kind, event_date, event_name,
               event_timestamp, updated_at)
               VALUES ('cus_1', 'api_calls', TIMESTAMPTZ '2026-10-02 00:00:00+00', TIMESTAMPTZ '2026-10-03 00:00:00+00',
               1, 500, 'i', 'k', 'acknowledged', 1, ?, ?, 'day', DATE '2026-10-02', 'metering_api_calls', ?, ?)""",
            [now - dt.timedelta(seconds=40), now, now, now])
        result = pull_stripe_state(con, client, MONTH, meters=["api_calls", "seats"],
                                   settings=ReconcileSettings(settle_seconds=900), now=now)
    pending = result.summaries.filter(status="pending")
    assert pending.select("meter", "status_reason").rows() == [
        ("api_calls", "last acknowledged push 40 s ago < settle delay 900 s")]
    assert pending["aggregated_value"].to_list() == [None]
    # seats had no recent push: pulled as usual
    assert result.summaries.filter(meter="seats", grain="period")["aggregated_value"].to_list() == [D(7)]


def test_reconcile_command_pulls_through_env_configured_client(stripe_sandbox, isolated_env, monkeypatch):
    from click.testing import CliRunner

    from metering.cli import cli

    _stripe_month(stripe_sandbox.client())
    with warehouse.open_warehouse() as con:
        _periods(con)
    monkeypatch.setenv("STRIPE_API_KEY", stripe_sandbox.api_key)
    monkeypatch.setenv("STRIPE_API_BASE", stripe_sandbox.base_url)
    monkeypatch.setenv("METERING_STRIPE_SETTLE_SECONDS", "0")
    result = CliRunner().invoke(cli, ["reconcile", "--period", "2026-10"])
    # no rated lines in this warehouse: Stripe's api_calls and seats usage is extra (7300), so the check
    # fails; and our preview's 7300 is on no meter row and on none of Stripe's lines: equal totals, 7300 + 7300
    assert result.exit_code == 4, result.output
    assert "pulled from Stripe:" in result.output and "0 pending), 2 invoices, 4 lines" in result.output
    assert "extra_in_stripe          2" in result.output
    assert "unexplained 146.00 USD" in result.output
    assert stripe_sandbox.api_key not in result.output
    # I16: the key is nowhere in what the pull and the report leave behind
    report = CliRunner().invoke(cli, ["report", "--period", "2026-10"])
    assert report.exit_code == 0, report.output
    for path in isolated_env.rglob("*"):
        if path.is_file():
            body = path.read_bytes()
            assert stripe_sandbox.api_key.encode() not in body and b"sk_test_" not in body, path
    with warehouse.open_warehouse(read_only=True) as con:
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            text = con.execute(f"SELECT string_agg(CAST(t AS VARCHAR), '') FROM {table} t").fetchone()[0] or ""
            assert "sk_test_" not in text, table


def test_pull_assets_in_dagster(stripe_sandbox, isolated_env):
    import dagster as dg

    from pipelines.defs.reconciliation.assets import stripe_invoice_lines, stripe_meter_summaries
    from pipelines.resources import StripeResource
    from pipelines.resources import ProjectPaths, WarehouseResource

    _stripe_month(stripe_sandbox.client())
    with warehouse.open_warehouse() as con:
        _periods(con)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [stripe_meter_summaries, stripe_invoice_lines], partition_key="2026-10-01", instance=instance,
            resources={"warehouse": WarehouseResource(), "paths": ProjectPaths(),
                       "stripe": StripeResource(base_url=stripe_sandbox.base_url)},
            run_config={"ops": {"stripe_meter_summaries": {"config": {"settle_seconds": 0, "pull_rate": 0}}}},
        )
    assert result.success
    [summaries] = result.asset_materializations_for_node("stripe_meter_summaries")
    assert summaries.metadata["pending"].value == 0
    [lines] = result.asset_materializations_for_node("stripe_invoice_lines")
    assert (lines.metadata["dagster/row_count"].value, lines.metadata["invoices"].value) == (4, 2)
    with warehouse.open_warehouse(read_only=True) as con:
        assert con.execute("SELECT sum(amount) FROM stripe_invoice_lines_api").fetchone()[0] == 7300


def test_pagination_gives_the_same_rows_as_one_page(stripe_sandbox, isolated_env):
    """Pages of 1 (starting_after cursors through meters, summaries, invoices) equal pages of 100."""
    client = stripe_sandbox.client()
    _stripe_month(client)
    with warehouse.open_warehouse() as con:
        _periods(con)
        big = pull_stripe_state(con, client, MONTH, meters=["api_calls", "seats"],
                                settings=ReconcileSettings(settle_seconds=0, pull_rate=0), now=dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
        small = pull_stripe_state(con, client, MONTH, meters=["api_calls", "seats"],
                                  settings=ReconcileSettings(settle_seconds=0, pull_rate=0, page_size=1),
                                  now=dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
    assert small.api_calls > big.api_calls
    for a, b in ((big.summaries, small.summaries), (big.invoices, small.invoices), (big.lines, small.lines)):
        assert a.sort(pl.all()).equals(b.sort(pl.all()))
    assert big.summaries.filter(grain="day").height >= 2 and big.invoices.height == 2  # several pages each


def _acknowledged(con, day: str, value: int, at: dt.datetime) -> None:
    """cus_1's api_calls day window `day` pushed with `value`, acknowledged by Stripe at `at`."""
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    con.execute(
        """INSERT INTO stripe_push_ledger (customer_id, meter, window_start, window_end, revision, value, identifier,
           idempotency_key, status, attempts, last_attempt_at, created_at, window_kind, event_date, event_name,
           event_timestamp, updated_at)
           VALUES ('cus_1', 'api_calls', ?, ?, 1, ?, ?, ?, 'acknowledged', 1, ?, ?, 'day', ?, 'metering_api_calls',
           ?, ?)""",
        [start, start + dt.timedelta(days=1), value, f"i-{day}", f"k-{day}", at, at, start.date(), start, at])


def test_a_push_of_another_period_leaves_this_periods_summary_settled(stripe_sandbox, isolated_env):
    """October is reconciled on Nov 2 at 12:00 while November is being pushed: every October window was
    acknowledged on Oct 2, a November window 5 minutes ago. October's summary is read (1500 calls). Once,
    the November push made October's rows `pending` (explained) whatever Stripe had billed."""
    client = stripe_sandbox.client()
    _stripe_month(client)
    now = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        _periods(con)
        _acknowledged(con, "2026-10-01", 1000, dt.datetime(2026, 10, 2, 11, tzinfo=dt.UTC))
        _acknowledged(con, "2026-10-02", 500, dt.datetime(2026, 10, 2, 11, tzinfo=dt.UTC))
        _acknowledged(con, "2026-11-02", 42, now - dt.timedelta(minutes=5))
        result = pull_stripe_state(con, client, MONTH, meters=["api_calls", "seats"],
                                   settings=ReconcileSettings(settle_seconds=900), now=now)
    assert result.pending == 0
    period = {r["meter"]: r["aggregated_value"] for r in result.summaries.filter(grain="period").iter_rows(named=True)}
    assert period == {"api_calls": D(1500), "seats": D(7)}


def test_the_final_invoice_of_a_cancelled_subscription_closes_its_period(stripe_sandbox, isolated_env, rules_dir):
    """cus_1 (test clock) used 1500 calls at 0.2 c on Oct 1-2, and its subscription was cancelled on Oct
    20 with invoice_now: Stripe's final invoice bills Oct 1 .. Oct 20, 300 cents, paid. Our period runs
    to Nov 1. The pull reads when the subscription ended, and that invoice closes the period: matched,
    paid 300. Once, the invoice row was `pending` for ever on the test clock, its status and paid blank."""
    from metering.reconcile.run import reconcile_period
    from metering.rules.meters import load_meters

    client = stripe_sandbox.client()
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts("2026-10-01T00:00:00")})
    customer = client.v1.customers.create({"metadata": {"customer_id": "cus_1"}, "test_clock": clock.id})
    meter = client.v1.billing.meters.create({
        "display_name": "api_calls", "event_name": "metering_api_calls", "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"}, "event_time_window": "day"})
    price = client.v1.prices.create({"currency": "usd", "product": client.v1.products.create({"name": "api"}).id,
                                     "unit_amount_decimal": "0.2",
                                     "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}],
                                          "metadata": {"customer_id": "cus_1"},
                                          "billing_cycle_anchor": _ts("2026-11-01T00:00:00")})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-06T00:00:00")})
    for value, when in (("1000", "2026-10-01T10:00:00"), ("500", "2026-10-02T10:00:00")):
        client.v1.billing.meter_events.create({"event_name": "metering_api_calls", "timestamp": _ts(when),
                                               "payload": {"stripe_customer_id": customer.id, "value": value},
                                               "identifier": when})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-20T00:00:00")})
    client.v1.subscriptions.cancel(sub.id, {"invoice_now": True})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-21T00:00:00")})
    now = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
    settings = ReconcileSettings(settle_seconds=0, pull_rate=0)
    with warehouse.open_warehouse() as con:
        con.execute("""INSERT INTO rated_usage (customer_id, period_start, period_end, segment_start, segment_end, plan,
                       plan_version, rules_hash, charge_id, charge, model, meter, quantity, billable_quantity,
                       amount_minor, currency, rounding, rated_at) VALUES ('cus_1', DATE '2026-10-01',
                       DATE '2026-11-01', DATE '2026-10-01', DATE '2026-11-01', 'pro', '2026-01', 'h', 0, 'api calls',
                       'per_unit', 'api_calls', 1500, 1500, 300, 'usd', 'half_up', ?)""", [now])
        con.execute("INSERT INTO invoice_previews VALUES ('cus_1', DATE '2026-10-01', DATE '2026-11-01', 'usd', 300, "
                    "3.00, 1, ?)", [now])
        con.execute("INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, test_clock_id, synced_at) "
                    "VALUES ('cus_1', ?, ?, ?)", [customer.id, clock.id, now])
        for day, value in (("2026-10-01", 1000), ("2026-10-02", 500)):
            _acknowledged(con, day, value, dt.datetime(2026, 10, 6, tzinfo=dt.UTC))
            start = dt.datetime.fromisoformat(day).replace(hour=10, tzinfo=dt.UTC)
            con.execute("INSERT INTO usage_aggregates (customer_id, meter, dimensions, hour, event_date, quantity, "
                        "event_count, last_event_time, last_event_id) VALUES ('cus_1', 'api_calls', '{}', ?, ?, ?, ?, "
                        "?, ?)", [start, start.date(), value, value, start, day])
        pulled = pull_stripe_state(con, client, MONTH, meters=["api_calls"], settings=settings, now=now)
        result = reconcile_period(con, MONTH, settings=settings, meters=load_meters(rules_dir), now=now)
    assert result.usage.select("meter", "status", "amount_diff_minor").rows() == [("api_calls", "matched", 0)]
    inv = result.invoices.row(0, named=True)
    assert (inv["status"], inv["amount_diff_minor"], inv["invoice_status"], inv["amount_paid"]) == (
        "matched", 0, "paid", 300)
    assert result.check_passed()
    final = pulled.invoices.filter(pl.col("total") == 300).row(0, named=True)
    assert (final["period_end"], final["subscription_ended_at"]) == (dt.datetime(2026, 10, 20, tzinfo=dt.UTC),) * 2


def test_customers_on_a_test_clock_are_found_or_the_pull_fails(tmp_path):
    """With no customer map, the pull finds our customers by metadata: Stripe lists those on a test clock
    only per clock, so the clocks are listed first. A 500 on that list left every customer on a clock
    out, silently (an empty map, no invoice pulled); it fails the pull, naming the request."""
    import pytest

    from metering.errors import ExternalServiceError
    from metering.reconcile import pulls
    from metering.stripe_sandbox.testing import running_sandbox

    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        client = sb.client(max_network_retries=0)
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts("2026-10-01T00:00:00")})
        on_clock = client.v1.customers.create({"name": "Acme", "metadata": {"customer_id": "acme"}, "test_clock": clock.id})
        plain = client.v1.customers.create({"name": "Globex", "metadata": {"customer_id": "globex"}})
        reader = pulls._Reader(client, 0, 100)
        assert pulls._customer_map(con, reader) == {"acme": on_clock.id, "globex": plain.id}
        sb.inject_fault("server_error", path="/v1/test_helpers/test_clocks", method="GET", count=1)
        with pytest.raises(ExternalServiceError, match="Stripe list request failed"):
            pulls._customer_map(con, reader)

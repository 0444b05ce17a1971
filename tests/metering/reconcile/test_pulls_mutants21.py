"""Pulls of Stripe's side of a month: cases a mutation audit (m21b) found no test for.

Most reuse `test_pulls_sandbox`'s October on the loopback sandbox: cus_1 on a test clock, api_calls
(sum) 1000 on Oct 1 + 500 on Oct 2, seats (last) 5 then 7; Stripe bills October on Nov 1.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import polars as pl
import pytest
import stripe

from metering import warehouse
from metering.reconcile.pulls import month_items, pull_invoices_into_warehouse, pull_stripe_state
from metering.reconcile.settings import ReconcileSettings
from metering.warehouse import insert_frame
from test_pulls_sandbox import MONTH, _acknowledged, _periods, _stripe_month, _ts

NOW = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)


def _api_calls_summary(con, client):
    result = pull_stripe_state(con, client, MONTH, meters=["api_calls", "seats"],
                               settings=ReconcileSettings(settle_seconds=900, pull_rate=0), now=NOW)
    return result.summaries.filter(meter="api_calls", grain="period").row(0, named=True)


def test_pages_of_two_read_every_object_once(stripe_sandbox, isolated_env):
    """Pages of 2 (cursor = the last object of the page) give the same rows as one page of 100. A cursor
    on the page's first object read each page's second object twice: 3 day summaries in pages of 2
    overlap, and October's api_calls would count Oct 2 twice."""
    client = stripe_sandbox.client()
    cus, _ = _stripe_month(client)
    # a third day of api_calls, so the day summaries take two pages of 2
    client.v1.billing.meter_events.create({"event_name": "metering_api_calls", "timestamp": _ts("2026-10-03T10:00:00"),
                                           "payload": {"stripe_customer_id": cus, "value": "250"}, "identifier": "oct-3"})
    with warehouse.open_warehouse() as con:
        _periods(con)
        big, small = (pull_stripe_state(con, client, MONTH, meters=["api_calls", "seats"], now=NOW,
                                        settings=ReconcileSettings(settle_seconds=0, pull_rate=0, page_size=size))
                      for size in (100, 2))
    for a, b in ((big.summaries, small.summaries), (big.invoices, small.invoices), (big.lines, small.lines)):
        assert a.sort(pl.all()).equals(b.sort(pl.all()))
    days = small.summaries.filter(meter="api_calls", grain="day").sort("window_start")
    assert [(r["window_start"].date(), r["aggregated_value"]) for r in days.iter_rows(named=True)] == [
        (dt.date(2026, 10, 1), D(1000)), (dt.date(2026, 10, 2), D(500)), (dt.date(2026, 10, 3), D(250))]
    # 1000 + 500 + 250
    assert small.summaries.filter(meter="api_calls", grain="period")["aggregated_value"].to_list() == [D(1750)]


@pytest.mark.parametrize(("day", "status", "age", "pending"), [
    # the window starting at the period's first instant is the period's
    ("2026-10-01", "acknowledged", 40, True),
    # Nov 1 00:00 is November's first window, not October's last (half-open [Oct 1, Nov 1))
    ("2026-11-01", "acknowledged", 40, False),
    # a push Stripe refused left nothing for its summary to catch up on
    ("2026-10-02", "failed", 40, False),
    # "younger than settle_seconds": acknowledged exactly 900 s ago is trusted
    ("2026-10-02", "acknowledged", 900, False),
    ("2026-10-02", "acknowledged", 899, True),
], ids=["first-window-of-period-holds", "next-periods-first-window-does-not", "failed-push-does-not",
        "exactly-the-settle-delay-ago-is-settled", "a-second-younger-holds"])
def test_the_settle_guard_holds_only_for_a_young_acknowledged_push_of_the_period(
        stripe_sandbox, isolated_env, day, status, age, pending):
    client = stripe_sandbox.client()
    _stripe_month(client)
    with warehouse.open_warehouse() as con:
        _periods(con)
        _acknowledged(con, day, 1, NOW - dt.timedelta(seconds=age))
        con.execute("UPDATE stripe_push_ledger SET status = ?", [status])
        row = _api_calls_summary(con, client)
    if pending:
        assert (row["status"], row["aggregated_value"]) == ("pending", None)
        assert row["status_reason"] == f"last acknowledged push {age} s ago < settle delay 900 s"
    else:
        assert (row["status"], row["aggregated_value"]) == ("settled", D(1500))   # 1000 + 500


def test_the_newest_acknowledgement_in_the_period_decides_the_settle_guard(stripe_sandbox, isolated_env):
    """Oct 1's window was acknowledged a month ago, Oct 2's 40 s ago: Stripe's summary may still miss
    Oct 2's 500, so the period is pending (by the newest acknowledgement, not the oldest)."""
    client = stripe_sandbox.client()
    _stripe_month(client)
    with warehouse.open_warehouse() as con:
        _periods(con)
        _acknowledged(con, "2026-10-01", 1000, dt.datetime(2026, 10, 2, 11, tzinfo=dt.UTC))
        _acknowledged(con, "2026-10-02", 500, NOW - dt.timedelta(seconds=40))
        row = _api_calls_summary(con, client)
    assert (row["status"], row["status_reason"]) == ("pending", "last acknowledged push 40 s ago < settle delay 900 s")


def test_another_customers_longer_first_period_does_not_hold_this_customers_summary(stripe_sandbox, isolated_env):
    """cus_2's first period runs Oct 1 .. Nov 15 (a subscription created on Oct 1 anchored on the 15th).
    cus_1's November push 5 minutes ago falls inside cus_2's period, not cus_1's October: cus_1's
    October summary is read (1500), not held pending by a window of another customer's period."""
    client = stripe_sandbox.client()
    _stripe_month(client)
    with warehouse.open_warehouse() as con:
        _periods(con)
        insert_frame(con, "invoice_previews", pl.DataFrame([dict(
            customer_id="cus_2", period_start=dt.date(2026, 10, 1), period_end=dt.date(2026, 11, 15), currency="usd",
            total_minor=0, total=D("0.00"), lines=0, rated_at=NOW)]).with_columns(pl.col("total").cast(pl.Decimal(38, 2))))
        _acknowledged(con, "2026-11-01", 42, NOW - dt.timedelta(minutes=5))
        row = _api_calls_summary(con, client)
    assert (row["status"], row["aggregated_value"]) == ("settled", D(1500))


def test_a_count_meter_keeps_one_row_per_day_and_their_sum(stripe_sandbox, isolated_env):
    """A count meter is additive over days like a sum: 3 requests on Oct 1 (in 3 hour windows) and 1 on
    Oct 2 are day rows 3 and 1 (for analysts) and a period row of 3 + 1 = 4."""
    client = stripe_sandbox.client()
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts("2026-10-01T00:00:00")})
    customer = client.v1.customers.create({"metadata": {"customer_id": "cus_1"}, "test_clock": clock.id})
    client.v1.billing.meters.create({
        "display_name": "requests", "event_name": "metering_requests", "default_aggregation": {"formula": "count"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"}, "event_time_window": "hour"})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-06T00:00:00")})
    for i, when in enumerate(("2026-10-01T01:00:00", "2026-10-01T02:00:00", "2026-10-01T03:00:00",
                              "2026-10-02T01:00:00")):
        client.v1.billing.meter_events.create({"event_name": "metering_requests", "timestamp": _ts(when),
                                               "payload": {"stripe_customer_id": customer.id}, "identifier": f"r{i}"})
    with warehouse.open_warehouse() as con:
        _periods(con)
        result = pull_stripe_state(con, client, MONTH, meters=["requests"],
                                   settings=ReconcileSettings(settle_seconds=0, pull_rate=0), now=NOW)
    s = result.summaries
    days = s.filter(grain="day").filter(pl.col("aggregated_value") != 0).sort("window_start")
    assert [(r["window_start"].date(), r["aggregated_value"]) for r in days.iter_rows(named=True)] == [
        (dt.date(2026, 10, 1), D(3)), (dt.date(2026, 10, 2), D(1))]
    assert s.filter(grain="period")["aggregated_value"].to_list() == [D(4)]


def test_a_mid_month_date_pulls_its_month(stripe_sandbox, isolated_env):
    """Oct 15 names October: both pulls store their rows under 2026-10-01 (api_calls 1000 + 500)."""
    client = stripe_sandbox.client()
    _stripe_month(client)
    with warehouse.open_warehouse() as con:
        _periods(con)
        result = pull_stripe_state(con, client, dt.date(2026, 10, 15), meters=["api_calls"],
                                   settings=ReconcileSettings(settle_seconds=0, pull_rate=0), now=NOW)
        stored = {t: con.execute(f"SELECT DISTINCT billing_month FROM {t}").fetchall()
                  for t in ("stripe_meter_summaries", "stripe_invoices_api", "stripe_invoice_lines_api")}
    assert result.billing_month == MONTH
    assert result.summaries.filter(grain="period")["aggregated_value"].to_list() == [D(1500)]
    assert stored == dict.fromkeys(stored, [(MONTH,)])


def _item(customer_id, period_start, key, invoice, status):
    return dict(customer_id=customer_id, period_start=period_start, period_end=period_start, plan="pro",
                plan_version="2026-01", charge="minimum", currency="usd", revision=1, amount_minor=100,
                target_minor=100, item_key=key, stripe_customer_id=f"stripe_{customer_id}", stripe_invoice_id=invoice,
                status=status, created_at=NOW, updated_at=NOW)


def test_month_items_are_the_months_periods_and_unplaced_only_when_they_may_be_at_stripe(tmp_path):
    """October's items: periods starting Oct 1 .. Oct 31 (Nov 1 is November's). A customer is "unplaced"
    when an item of the month is on no invoice the ledger knows and may be at Stripe: sent or unknown,
    not pending (never sent) or failed (Stripe refused it)."""
    oct1, oct31, nov1 = dt.date(2026, 10, 1), dt.date(2026, 10, 31), dt.date(2026, 11, 1)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        insert_frame(con, "stripe_invoice_items", pl.DataFrame([
            _item("placed", oct1, "k-placed", "in_oct", "acknowledged"),
            _item("sent", oct31, "k-sent", None, "sent"),
            _item("unknown", oct1, "k-unknown", None, "unknown"),
            _item("never_sent", oct1, "k-never", None, "pending"),
            _item("refused", oct1, "k-refused", None, "failed"),
            _item("november", nov1, "k-nov", "in_nov", "acknowledged"),
            _item("november_unplaced", nov1, "k-nov-2", None, "sent"),
        ]))
        items = month_items(con, MONTH)
    assert items.invoice_ids == {"in_oct"}
    assert items.item_keys == {"k-placed", "k-sent", "k-unknown", "k-never", "k-refused"}
    assert items.unplaced_customers == {"sent", "unknown"}


def _seat_subscription(client, frozen: str, anchor: str):
    """cus_1 on a test clock frozen at `frozen`, subscribed to a 10.00 monthly seat anchored at `anchor`:
    (clock, customer, subscription)."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts(frozen)})
    customer = client.v1.customers.create({"metadata": {"customer_id": "cus_1"}, "test_clock": clock.id})
    price = client.v1.prices.create({"currency": "usd", "product": client.v1.products.create({"name": "seat"}).id,
                                     "unit_amount": 1000, "recurring": {"interval": "month"}})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}],
                                          "metadata": {"customer_id": "cus_1"}, "billing_cycle_anchor": _ts(anchor)})
    return clock, customer, sub


def test_an_invoice_with_more_lines_than_stripe_embeds_is_read_whole(stripe_sandbox, isolated_env):
    """Stripe embeds 10 lines in an invoice and says has_more: the October cycle invoice with the 10.00
    fee and 10 invoice items of 1.00 has 11 lines, 1000 + 10 x 100 = 2000 cents, all of them pulled.
    (The fee is November's, in advance: the invoice closing October is the one created on Nov 1.)"""
    client = stripe_sandbox.client()
    clock, customer, _ = _seat_subscription(client, "2026-10-01T00:00:00", "2026-11-01T00:00:00")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-11-01T00:30:00")})
    draft = next(client.v1.invoices.list({"customer": customer.id, "status": "draft"}).auto_paging_iter())
    for i in range(10):
        client.v1.invoice_items.create({"customer": customer.id, "invoice": draft.id, "amount": 100, "currency": "usd",
                                        "metadata": {"metering_item": f"k{i}"}})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-11-01T02:00:00")})
    with warehouse.open_warehouse() as con:
        result = pull_invoices_into_warehouse(con, client, MONTH, settings=ReconcileSettings(pull_rate=0), now=NOW)
    lines = result.lines.filter(pl.col("invoice_id") == draft.id)
    assert (lines.height, lines["amount"].sum()) == (11, 2000)
    assert lines["metering_item"].drop_nulls().sort().to_list() == [f"k{i}" for i in range(10)]
    # its header: created at the period's end, finalized after Stripe's 1 h grace, no credit note
    # before payment (0, known; NULL would say "pulled without it")
    inv = result.invoices.filter(pl.col("invoice_id") == draft.id).row(0, named=True)
    assert (inv["total"], inv["pre_payment_credit_notes_amount"], inv["created"], inv["finalized_at"]) == (
        2000, 0, dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC))


def test_the_invoice_closing_the_next_period_is_not_pulled_with_this_month(stripe_sandbox, isolated_env):
    """Pulled on Dec 1 02:00, October's invoices are the two whose period touches October (the
    subscription's first, Oct 1 .. Oct 1, and the one closing October, Oct 1 .. Nov 1); the invoice
    closing November (Nov 1 .. Dec 1) starts at October's end and is November's."""
    client = stripe_sandbox.client()
    _, clock = _stripe_month(client)
    client.v1.test_helpers.test_clocks.advance(clock, {"frozen_time": _ts("2026-12-01T02:00:00")})
    with warehouse.open_warehouse() as con:
        result = pull_invoices_into_warehouse(con, client, MONTH, settings=ReconcileSettings(pull_rate=0), now=NOW)
    starts = sorted(r["period_start"] for r in result.invoices.iter_rows(named=True))
    assert starts == [dt.datetime(2026, 10, 1, tzinfo=dt.UTC)] * 2


def test_a_subscription_set_to_cancel_at_period_end_has_not_ended(stripe_sandbox, isolated_env):
    """cancel_at_period_end on Oct 10 sets Stripe's canceled_at (the request) but the subscription runs
    to Nov 1: on Oct 20 its invoices carry no subscription_ended_at, so none closes October early."""
    client = stripe_sandbox.client()
    clock, customer, sub = _seat_subscription(client, "2026-10-01T00:00:00", "2026-11-01T00:00:00")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-10T00:00:00")})
    assert client.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True}).canceled_at is not None
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-20T00:00:00")})
    with warehouse.open_warehouse() as con:
        result = pull_invoices_into_warehouse(con, client, MONTH, settings=ReconcileSettings(pull_rate=0), now=NOW)
    assert result.invoices.height == 1
    assert result.invoices["subscription_ended_at"].to_list() == [None]


# Settings and the run: pure, no sandbox.

@pytest.mark.parametrize(("raw", "expected"), [
    ("USD=5,jpy=0", {"usd": 5, "jpy": 0}),          # currencies are Stripe's lower-case codes
    (" eur = 2 ,", {"eur": 2}),
])
def test_tolerances_are_read_per_lower_case_currency(monkeypatch, raw, expected):
    monkeypatch.setenv("METERING_RECON_TOLERANCE", raw)
    settings = ReconcileSettings.from_env()
    assert settings.tolerance_minor == expected
    for currency, minor in expected.items():
        assert settings.tolerance_for(currency.upper()) == settings.tolerance_for(currency) == minor
    assert settings.tolerance_for("gbp") == 1       # the default: 1 minor unit per line


def test_a_tolerance_without_a_currency_is_refused(monkeypatch):
    """'=5' named no currency: it would be the tolerance of lines whose currency is unknown."""
    from metering.errors import BadInputError

    monkeypatch.setenv("METERING_RECON_TOLERANCE", "usd=1, =5")
    with pytest.raises(BadInputError, match="'=5' is not CURRENCY=MINOR_UNITS"):
        ReconcileSettings.from_env()


def test_whole_number_settings_go_from_zero_up_to_ten_to_the_twelfth(monkeypatch):
    from metering.errors import BadInputError

    monkeypatch.setenv("METERING_STRIPE_SETTLE_SECONDS", "0")     # 0: trust Stripe's summaries at once
    monkeypatch.setenv("METERING_RECON_MAX_UNEXPLAINED_MINOR", "0")
    assert (ReconcileSettings.from_env().settle_seconds, ReconcileSettings.from_env().max_unexplained_minor) == (0, 0)
    monkeypatch.setenv("METERING_STRIPE_SETTLE_SECONDS", "-1")
    with pytest.raises(BadInputError, match="must not be negative"):
        ReconcileSettings.from_env()
    monkeypatch.setenv("METERING_STRIPE_SETTLE_SECONDS", str(10**12))
    monkeypatch.setenv("METERING_STRIPE_PULL_RATE", "")      # empty: the default, 20 reads per second
    settings = ReconcileSettings.from_env()
    assert (settings.settle_seconds, settings.pull_rate) == (10**12, 20.0)
    monkeypatch.setenv("METERING_STRIPE_SETTLE_SECONDS", str(10**12 + 1))
    with pytest.raises(BadInputError, match="is too large"):
        ReconcileSettings.from_env()


def test_a_mid_month_date_reconciles_its_month_and_finds_its_settings(tmp_path, rules_dir):
    """reconcile_period and stored_settings take any day of the month: Oct 15 reconciles October (rows
    and settings stored under 2026-10-01) and Oct 20 finds the settings that judged them."""
    from metering.reconcile.run import reconcile_period, stored_settings
    from metering.rules.meters import load_meters

    settings = ReconcileSettings(settle_seconds=0, max_unexplained_minor=7)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        _periods(con)
        result = reconcile_period(con, dt.date(2026, 10, 15), settings=settings, meters=load_meters(rules_dir), now=NOW)
        stored = stored_settings(con, dt.date(2026, 10, 20))
        months = {t: con.execute(f"SELECT DISTINCT billing_month FROM {t}").fetchall()
                  for t in ("invoice_reconciliation", "reconciliation_runs")}
    assert result.billing_month == MONTH
    assert months == {"invoice_reconciliation": [(MONTH,)], "reconciliation_runs": [(MONTH,)]}
    assert stored == settings


@pytest.mark.parametrize("placed", [True, False], ids=["ledger-names-the-invoice", "ledger-names-no-invoice"])
def test_a_later_invoice_is_pulled_for_a_months_item_only_when_it_carries_one(stripe_sandbox, isolated_env, placed):
    """September's engine item k0 was created after September's invoice was final, with ten other
    items: Stripe put all eleven on the invoice closing October (Oct 1 .. Nov 1; the fee 1000 + 11 x 100
    = 2100, 12 lines, more than the 10 Stripe embeds). September's pull takes that invoice, whole,
    whether the ledger names it or (Stripe held the item pending) names none; the invoice closing
    November carries no September item and is not pulled."""
    client = stripe_sandbox.client()
    clock, customer, _ = _seat_subscription(client, "2026-09-01T00:00:00", "2026-10-01T00:00:00")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-01T02:00:00")})
    for i in range(11):
        client.v1.invoice_items.create({"customer": customer.id, "amount": 100, "currency": "usd",
                                        "metadata": {"metering_item": f"k{i}"}})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-11-01T02:00:00")})
    [closing_october] = [i.id for i in client.v1.invoices.list({"customer": customer.id}).auto_paging_iter()
                         if i.period_start == _ts("2026-10-01T00:00:00") and i.period_end == _ts("2026-11-01T00:00:00")]
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-12-01T02:00:00")})
    sep = dt.date(2026, 9, 1)
    with warehouse.open_warehouse() as con:
        insert_frame(con, "stripe_invoice_items", pl.DataFrame(
            [_item("cus_1", sep, "k0", closing_october if placed else None, "acknowledged")]))
        result = pull_invoices_into_warehouse(con, client, sep, settings=ReconcileSettings(pull_rate=0), now=NOW)
    # September's own two (Sep 1 .. Sep 1 at the start, Sep 1 .. Oct 1 closing it) and the one carrying k0
    periods = sorted((r["period_start"].date(), r["period_end"].date()) for r in result.invoices.iter_rows(named=True))
    assert periods == [(sep, sep), (sep, dt.date(2026, 10, 1)), (dt.date(2026, 10, 1), dt.date(2026, 11, 1))]
    carried = result.lines.filter(pl.col("invoice_id") == closing_october)
    assert (carried.height, carried["amount"].sum()) == (12, 2100)


def test_customers_are_found_where_stripe_refuses_to_list_test_clocks(tmp_path):
    """Live mode has no test clocks: Stripe answers GET /v1/test_helpers/test_clocks with a 400
    (invalid_request_error). The pull then finds the customers of the plain list and does not fail.
    A loopback proxy in front of the sandbox gives that 400 and passes every other request on."""
    import json
    import threading
    import urllib.error
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from metering.reconcile import pulls
    from metering.stripe_sandbox.testing import running_sandbox

    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        class LiveMode(BaseHTTPRequestHandler):
            def _answer(self, status, headers, body):
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self):
                if self.path.startswith("/v1/test_helpers/test_clocks"):
                    return self._answer(400, [("Content-Type", "application/json")], json.dumps({"error": {
                        "type": "invalid_request_error", "message": "Test clocks are not available in live mode."}
                    }).encode())
                length = int(self.headers.get("Content-Length") or 0)
                req = urllib.request.Request(sb.base_url + self.path, data=self.rfile.read(length) if length else None,
                                             method=self.command, headers={k: v for k, v in self.headers.items()
                                                                           if k.lower() not in ("host", "connection")})
                try:
                    with urllib.request.urlopen(req) as resp:
                        self._answer(resp.status, resp.getheaders(), resp.read())
                except urllib.error.HTTPError as err:
                    self._answer(err.code, err.headers.items(), err.read())

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args):
                pass

        proxy = ThreadingHTTPServer(("127.0.0.1", 0), LiveMode)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            plain = sb.client().v1.customers.create({"name": "Globex", "metadata": {"customer_id": "globex"}})
            client = stripe.StripeClient(sb.api_key, base_addresses={"api": f"http://127.0.0.1:{proxy.server_port}"},
                                         max_network_retries=0)
            assert pulls._customer_map(con, pulls._Reader(client, 0, 100)) == {"globex": plain.id}
        finally:
            proxy.shutdown()
            proxy.server_close()


@pytest.mark.parametrize(("text", "says"), [
    ("9999-12", "--period: '9999-12' is outside 2000-01 .. 9998-12"),   # its month's end overflows a date
    ("1999-12", "--period: '1999-12' is outside 2000-01 .. 9998-12"),
    ("2026-13", "--period: '2026-13' is not a month like 2026-10"),
])
def test_a_period_outside_the_supported_months_is_named(text, says):
    from metering.errors import BadInputError
    from metering.reconcile.run import parse_period

    assert parse_period("2026-10-15") == parse_period("2026-10") == MONTH
    with pytest.raises(BadInputError) as err:
        parse_period(text)
    assert str(err.value) == says


def test_the_tolerance_told_names_every_configured_currency():
    """jpy=0 configured, a month in usd only: what the report prints still says jpy's 0, not "1 minor
    unit per line, every currency"."""
    settings = ReconcileSettings(tolerance_minor={"jpy": 0})
    assert settings.describe_tolerance() == "jpy: 0 minor unit(s) per line"
    assert settings.describe_tolerance(["USD", None]) == "jpy: 0 minor unit(s) per line; usd: 1 minor unit(s) per line"
    assert ReconcileSettings().describe_tolerance() == "1 minor unit(s) per line, every currency"

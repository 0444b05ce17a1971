"""End to end against the local Stripe sandbox: its signed webhooks reach the real receiver, an
outage loses deliveries, and repair (/v1/events through the stripe SDK) fills the gap."""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import uvicorn

from metering import warehouse
from metering.stripe_sandbox.testing import running_sandbox
from metering.webhooks.events import event_counts, land_directory
from metering.webhooks.receiver import ReceiverSettings, create_app
from metering.webhooks.repair import repair_events
from metering.webhooks.state import rebuild_state



def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


class ThreadedReceiver:
    """The real receiver app on uvicorn, in a thread of the test, on a loopback port."""

    def __init__(self, landing: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        # the endpoint's secret is only known once the endpoint (which needs our URL) exists
        self.settings = ReceiverSettings(secrets=[b"whsec_not_yet_known"], landing_dir=landing)
        app = create_app(self.settings)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/stripe"

    def __enter__(self) -> "ThreadedReceiver":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def _acme_on_api_calls(client, start: int) -> tuple:
    """(clock, meter, price, customer, subscription): acme on a test clock at `start`, billed 25 cents per
    API call (sum meter), 40 calls reported a minute after the start."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": start})
    meter = client.v1.billing.meters.create({
        "display_name": "API calls", "event_name": "metering_api_calls",
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"},
    })
    product = client.v1.products.create({"name": "API calls"})
    price = client.v1.prices.create({
        "currency": "usd", "product": product.id, "unit_amount": 25,
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
    })
    customer = client.v1.customers.create(
        {"name": "Acme", "metadata": {"customer_id": "acme"}, "test_clock": clock.id})
    sub = client.v1.subscriptions.create(
        {"customer": customer.id, "items": [{"price": price.id}], "metadata": {"customer_id": "acme"}})
    client.v1.billing.meter_events.create({
        "event_name": "metering_api_calls", "timestamp": start + 60,
        "payload": {"stripe_customer_id": customer.id, "value": "40"},
    })
    return clock, meter, price, customer, sub


def _first_cycle_payment_failed(sb, client) -> tuple:
    """(customer, subscription): acme on its test clock, whose first cycle's invoice (closing October,
    at 2026-11-01) fails its payment: the invoice open, the subscription past_due."""
    clock, _, _, customer, sub = _acme_on_api_calls(client, ts("2026-10-01T00:00:00"))
    sb.set_payment_behavior(customer.id, "fails")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-11-01T02:00:00")})
    return customer, sub


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def test_outage_then_repair_reaches_stripes_state(tmp_path: Path):
    landing = tmp_path / "landing"
    start = ts("2026-10-01T00:00:00")
    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        client = sb.client()
        receiver = ThreadedReceiver(landing)
        sb.create_webhook_endpoint(receiver.url)
        receiver.settings.secrets = [sb.webhook_secret.encode()]

        clock, meter, price, customer, sub = _acme_on_api_calls(client, start)
        sb.set_payment_behavior(customer.id, "fails")

        with receiver:
            client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-11-01T02:00:00")})
            deliveries = sb.wait_for_webhooks(timeout=30)
        assert deliveries, "the sandbox delivered nothing"

        landed = land_directory(con, landing)
        assert landed.events_added > 0 and landed.bad_records == 0
        rebuild_state(con)
        [(invoice_id, status, amount_due, attempts)] = con.execute(
            "SELECT invoice_id, status, amount_due, attempt_count FROM stripe_invoices"
            " WHERE billing_reason = 'subscription_cycle'").fetchall()
        assert (status, amount_due, attempts) == ("open", 40 * 25, 1)  # 40 calls x 25 cents
        assert con.execute("SELECT outcome FROM stripe_payment_attempts WHERE invoice_id = ?", [invoice_id]).fetchall() == [("failed",)]
        before = event_counts(con)
        assert before["events_from_repair"] == 0

        # outage: the receiver is down while the customer pays
        sb.set_payment_behavior(customer.id, "succeeds")
        client.v1.invoices.pay(invoice_id)
        sb.wait_for_webhooks(timeout=30)
        assert land_directory(con, landing).records_read == 0

        stats = repair_events(con, client)
        assert stats.events_repaired > 0
        assert stats.objects_refetched >= 1
        rebuild_state(con)
        truth = client.v1.invoices.retrieve(invoice_id)
        row = con.execute(
            "SELECT status, amount_due, amount_paid, amount_remaining, customer, customer_id, subscription_id"
            " FROM stripe_invoices WHERE invoice_id = ?", [invoice_id]).fetchone()
        assert row == ("paid", truth.amount_due, truth.amount_paid, truth.amount_remaining, customer.id, "acme", sub.id)
        assert truth.status == "paid" and truth.amount_paid == 1000
        after = event_counts(con)
        assert after["events_from_repair"] == stats.events_repaired
        assert after["events"] == before["events"] + stats.events_repaired
        # every event Stripe holds is now known, and a second repair adds nothing
        listed = {e.id for e in client.v1.events.list({"limit": 100}).auto_paging_iter()}
        known = {r[0] for r in con.execute("SELECT event_id FROM stripe_webhook_events").fetchall()}
        assert listed <= known
        assert repair_events(con, client).events_repaired == 0
        # the line's price was re-fetched, so the line names its Stripe meter
        assert con.execute(
            "SELECT price_id, stripe_meter_id, quantity_decimal, amount FROM stripe_invoice_lines WHERE invoice_id = ?",
            [invoice_id]).fetchall() == [(price.id, meter.id, 40, 1000)]
        # I16: neither the endpoint secret nor the API key ended up in the landing files or tables
        secrets = [sb.webhook_secret, sb.api_key, "whsec_", "sk_test_"]
        files_text = "".join(p.read_text() for p in landing.iterdir())
        assert not [s for s in secrets if s in files_text]
        for table in ("stripe_webhook_receipts", "stripe_webhook_events", "stripe_object_snapshots",
                      "stripe_invoices", "stripe_invoice_lines", "stripe_subscriptions", "stripe_payment_attempts"):
            text = con.execute(f"SELECT coalesce(string_agg(CAST(t AS VARCHAR), ''), '') FROM {table} t").fetchone()[0]
            assert not [s for s in secrets if s in text], table


def test_repair_refetches_an_object_whose_last_second_holds_two_versions(tmp_path: Path):
    """A failed payment paid again at once: the subscription goes past_due -> active within one second
    (the test clock stands still). Every event arrives, yet `created` cannot order the two versions
    and the status precedence ranks past_due after active, so the state said past_due. Repair, with
    no event missing, re-fetches the subscription, and the state is Stripe's."""
    landing = tmp_path / "landing"
    # the sandbox stamps events with its own clock, real time unless frozen: frozen, both versions fall in
    # one second whatever the machine's load (unfrozen, a slow run split them and the state was right)
    with running_sandbox(now=int(time.time())) as sb, warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        client = sb.client()
        receiver = ThreadedReceiver(landing)
        sb.create_webhook_endpoint(receiver.url)
        receiver.settings.secrets = [sb.webhook_secret.encode()]
        clock, _, _, customer, sub = _acme_on_api_calls(client, ts("2026-10-01T00:00:00"))
        sb.set_payment_behavior(customer.id, "fails")
        with receiver:
            client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-11-01T02:00:00")})
            sb.wait_for_webhooks(timeout=30)
            [invoice] = client.v1.invoices.list({"subscription": sub.id, "status": "open"}).data
            sb.set_payment_behavior(customer.id, "succeeds")
            client.v1.invoices.pay(invoice.id)
            sb.wait_for_webhooks(timeout=30)
        land_directory(con, landing)
        rebuild_state(con)
        statuses = {r[0] for r in con.execute(
            "SELECT raw ->> '$.data.object.status' FROM stripe_webhook_events WHERE object_id = ?", [sub.id]).fetchall()}
        assert {"past_due", "active"} <= statuses
        assert client.v1.subscriptions.retrieve(sub.id).status == "active"
        assert con.execute("SELECT status FROM stripe_subscriptions WHERE subscription_id = ?",
                           [sub.id]).fetchone() == ("past_due",)

        stats = repair_events(con, client)
        assert stats.events_repaired == 0 and stats.objects_refetched >= 1
        rebuild_state(con)
        assert con.execute("SELECT status FROM stripe_subscriptions WHERE subscription_id = ?",
                           [sub.id]).fetchone() == ("active",)
        assert con.execute("SELECT status, amount_paid FROM stripe_invoices WHERE invoice_id = ?",
                           [invoice.id]).fetchone() == ("paid", 1000)
        # the snapshot settles the tie: the next repair re-fetches nothing
        assert repair_events(con, client).objects_refetched == 0


def test_a_refetch_stopped_by_stripe_keeps_what_it_read(tmp_path: Path):
    """Two subscriptions to re-fetch; Stripe rate-limits the second. The first is stored before the
    error leaves (it once waited for the whole list, so one 429 lost every snapshot, and the next
    repair started over), and the next repair asks for the second alone."""
    import pytest
    import stripe

    from metering.webhooks.repair import _snapshot

    now = datetime(2026, 10, 1, tzinfo=timezone.utc)
    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        client = sb.client()
        _, _, _, _, first = _acme_on_api_calls(client, ts("2026-10-01T00:00:00"))
        second = client.v1.subscriptions.create({"customer": first.customer, "items": [{"price": first["items"].data[0].price.id}]})
        sb.inject_fault("rate_limit", path=f"/v1/subscriptions/{second.id}", method="GET", count=1)
        with pytest.raises(stripe.RateLimitError):
            _snapshot(con, client, [("subscription", first.id), ("subscription", second.id)], now)
        assert con.execute("SELECT object_id FROM stripe_object_snapshots").fetchall() == [(first.id,)]
        assert _snapshot(con, client, [("subscription", second.id)], now) == 1
        assert sorted(r[0] for r in con.execute("SELECT object_id FROM stripe_object_snapshots").fetchall()) == sorted(
            [first.id, second.id])


def test_an_event_of_a_snapshots_second_that_arrives_after_the_fetch_is_not_hidden_by_it(tmp_path: Path):
    """Repair reads the invoice open (its payment failed) and dates the snapshot at the newest event's
    second; in that same second (the clock stands still) the customer pays, and invoice.paid and the
    subscription's return to active arrive as webhooks after the fetch. The snapshot beat them both for
    good: the state said open and past_due while Stripe said paid and active, and no repair re-read them.
    Now the invoice's forward-only status wins at once, and the next repair re-reads the subscription
    (whose status moves both ways); the one after it has nothing left to re-read."""
    import json

    from metering.webhooks.inbox import LandingWriter

    with running_sandbox(now=ts("2026-11-01T03:00:00")) as sb, warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        client = sb.client()
        customer, sub = _first_cycle_payment_failed(sb, client)
        repair_events(con, client)  # the receiver was down: every event comes from repair, with snapshots
        rebuild_state(con)
        [(invoice_id,)] = con.execute(
            "SELECT invoice_id FROM stripe_invoices WHERE billing_reason = 'subscription_cycle' AND status = 'open'"
        ).fetchall()
        assert con.execute("SELECT status FROM stripe_subscriptions").fetchall() == [("past_due",)]
        known = {r[0] for r in con.execute("SELECT event_id FROM stripe_webhook_events").fetchall()}

        sb.set_payment_behavior(customer.id, "succeeds")
        client.v1.invoices.pay(invoice_id)
        writer = LandingWriter(tmp_path / "landing")  # the receiver is back: what it writes for each delivery
        late = [e for e in client.v1.events.list({"limit": 100}).auto_paging_iter() if e.id not in known]
        for event in late:
            writer.append(json.dumps(event.to_dict(for_json=True)), {})
        writer.close()
        assert {e.type for e in late} >= {"invoice.paid", "customer.subscription.updated"}
        snapshot_second = con.execute("SELECT max(version_created) FROM stripe_object_snapshots").fetchone()[0]
        assert {e.created for e in late} == {int(snapshot_second.timestamp())}
        land_directory(con, tmp_path / "landing")
        rebuild_state(con)
        assert con.execute("SELECT status, amount_paid FROM stripe_invoices WHERE invoice_id = ?",
                           [invoice_id]).fetchone() == ("paid", 1000)

        assert repair_events(con, client).objects_refetched >= 1
        rebuild_state(con)
        assert client.v1.subscriptions.retrieve(sub.id).status == "active"
        assert con.execute("SELECT status FROM stripe_subscriptions WHERE subscription_id = ?",
                           [sub.id]).fetchone() == ("active",)
        assert con.execute("SELECT status FROM stripe_invoices WHERE invoice_id = ?", [invoice_id]).fetchone() == ("paid",)
        assert repair_events(con, client).objects_refetched == 0


def test_a_repair_later_than_stripes_30_days_rereads_what_can_still_change(tmp_path: Path, caplog):
    """The receiver was down while the customer paid, and the next repair came 31 days after the
    previous one: Stripe's event list no longer holds those events, so repair listed nothing, said
    nothing, and the state kept the invoice open and the subscription past_due for good. Now the
    run sees that its listing cannot reach back to the previous repair, says so, and re-reads every
    invoice and subscription not yet final; the next run, within reach, re-reads nothing."""
    import logging
    from datetime import timedelta

    start = ts("2026-11-01T03:00:00")
    with running_sandbox(now=start) as sb, warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        client = sb.client()
        customer, sub = _first_cycle_payment_failed(sb, client)
        assert repair_events(con, client, now=_at(start)).gap_refetched == 0
        rebuild_state(con)
        [(invoice_id,)] = con.execute(
            "SELECT invoice_id FROM stripe_invoices WHERE billing_reason = 'subscription_cycle' AND status = 'open'"
        ).fetchall()

        sb.set_now(start + 3600)
        sb.set_payment_behavior(customer.id, "succeeds")
        client.v1.invoices.pay(invoice_id)   # no webhook lands: the receiver is down
        later = start + 31 * 86400
        sb.set_now(later)
        with caplog.at_level(logging.WARNING, logger="metering.webhooks.repair"):
            unread = repair_events(con, client, now=_at(later), refetch=False)
            assert "NOT re-read" in caplog.text and unread.objects_refetched == 0
            # a gap left unread is still one for the next run
            stats = repair_events(con, client, now=_at(later))
        assert stats.events_listed == 0   # beyond Stripe's reach: only a re-read can tell
        assert stats.gap_refetched == stats.objects_refetched
        open_objects = {("invoice", invoice_id), ("subscription", sub.id)}
        assert open_objects <= {tuple(r) for r in con.execute(
            "SELECT object_type, object_id FROM stripe_object_snapshots WHERE fetched_at = ?", [_at(later)]).fetchall()}
        assert "beyond the reach of Stripe's event list" in caplog.text
        rebuild_state(con)
        assert con.execute("SELECT status, amount_paid FROM stripe_invoices WHERE invoice_id = ?",
                           [invoice_id]).fetchone() == ("paid", 1000)
        assert con.execute("SELECT status FROM stripe_subscriptions WHERE subscription_id = ?",
                           [sub.id]).fetchone() == (client.v1.subscriptions.retrieve(sub.id).status,) == ("active",)
        assert con.execute("SELECT count(*) FROM stripe_repair_runs").fetchone() == (2,)

        next_run = repair_events(con, client, now=_at(later) + timedelta(hours=1))
        assert (next_run.gap_refetched, next_run.objects_refetched) == (0, 0)


def test_a_gap_reread_stopped_part_way_goes_on_where_it_stopped(tmp_path: Path):
    """A repair beyond the list's reach re-reads every object not yet final; Stripe rate-limits the
    subscription's read. The next run used to read everything again (no run was recorded), and a
    failure on one object kept the gap open for ever: it now reads only what was not read since."""
    import pytest
    import stripe

    start = ts("2026-11-01T03:00:00")
    with running_sandbox(now=start) as sb, warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        client = sb.client()
        customer, sub = _first_cycle_payment_failed(sb, client)
        repair_events(con, client, now=_at(start))
        rebuild_state(con)
        later = start + 31 * 86400
        sb.set_now(later)
        sb.inject_fault("rate_limit", path=f"/v1/subscriptions/{sub.id}", method="GET", count=1)
        with pytest.raises(stripe.RateLimitError):
            repair_events(con, client, now=_at(later))
        read_first = {tuple(r) for r in con.execute(
            "SELECT object_type, object_id FROM stripe_object_snapshots WHERE fetched_at = ?", [_at(later)]).fetchall()}
        assert read_first and ("subscription", sub.id) not in read_first
        assert con.execute("SELECT count(*) FROM stripe_repair_runs").fetchone() == (1,)   # the stopped run is none
        second = repair_events(con, client, now=_at(later + 60))
        assert {tuple(r) for r in con.execute("SELECT object_type, object_id FROM stripe_object_snapshots "
                                              "WHERE fetched_at = ?", [_at(later + 60)]).fetchall()} == {
            ("subscription", sub.id)}
        assert second.gap_refetched == 1

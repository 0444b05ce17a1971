"""The reconciled Stripe state (`metering/webhooks/state.py`): cases a hand mutation audit (28h) found
unchecked.

The status rank against a status it does not know, status before attempt count, per-subscription
version counts, the columns of a payment attempt, a line's currency, a draft's lines, the row
counts `rebuild_state` returns, and a warehouse without the catalog's tables. Expected values come
from docs/webhooks.md and the module docstring's ordering rules; each is worked out by hand in the
test's docstring. The customer
attribution changed in e2c7bab (stripe_customer_map first) is covered by test_invoice_attribution.py,
which killed every reachable mutant of it; only the path without the catalog's tables is new here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from metering.webhooks.state import rebuild_state
from test_webhook_state import START, con, land  # noqa: F401  (con is a fixture)
from webhook_payloads import event, invoice, line, subscription

UTC = timezone.utc


def ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- rule 3: status precedence --------------------------------------------------------------------

def test_a_draft_beats_a_version_of_unknown_status_in_its_second(con, tmp_path: Path):  # noqa: F811
    """`draft` is the lowest known invoice status (rank 0) but still ranks above a status the rank does
    not know (-1): a draft (evt_1) and a version with a status no Stripe invoice has (evt_9, the
    higher id) in one second give the draft. Were draft ranked like an unknown status, rule 5 would
    pick evt_9."""
    t = START + 500
    land(con, tmp_path, [[
        event("evt_1", "invoice.created", t, invoice("in_1", status="draft")),
        event("evt_9", "invoice.updated", t, invoice("in_1", status="not_a_status")),
    ]])
    assert con.execute("SELECT status, state_event_id FROM stripe_invoices").fetchall() == [("draft", "evt_1")]


def test_an_invoice_status_further_on_wins_its_second_over_a_higher_attempt_count(con, tmp_path: Path):  # noqa: F811
    """Rule 3 comes before rule 4. In one second: a payment_failed version, open with attempt_count 1
    (evt_9, the higher id), and an invoice.paid version that carries no attempt_count (paid out of
    band, evt_1). Status first: paid (rank 4) beats open (rank 1), so the state is paid from evt_1.
    Were the attempt count ranked first, 1 would beat the missing count (NULLS LAST) and the invoice
    would stay open."""
    t = START + 500
    paid = invoice("in_1", status="paid", amount_paid=1000)
    del paid["attempt_count"]
    land(con, tmp_path, [[
        event("evt_9", "invoice.payment_failed", t, invoice("in_1", attempt_count=1)),
        event("evt_1", "invoice.paid", t, paid),
    ]])
    assert con.execute("SELECT status, amount_remaining, state_event_id FROM stripe_invoices").fetchall() == [
        ("paid", 0, "evt_1")]


def test_each_subscription_counts_only_its_own_versions(con, tmp_path: Path):  # noqa: F811
    """sub_1 has 2 versions (created, updated), sub_2 has 1: state_events 2 and 1, not 3 each."""
    land(con, tmp_path, [[
        event("evt_1", "customer.subscription.created", START, subscription("sub_1")),
        event("evt_2", "customer.subscription.updated", START + 60, subscription("sub_1", status="past_due")),
        event("evt_3", "customer.subscription.created", START + 60, subscription("sub_2")),
    ]])
    assert con.execute("SELECT subscription_id, status, state_events FROM stripe_subscriptions ORDER BY 1"
                       ).fetchall() == [("sub_1", "past_due", 2), ("sub_2", "active", 1)]


# -- payment attempts -----------------------------------------------------------------------------

def test_a_payment_attempt_carries_its_events_time_and_the_invoices_amounts(con, tmp_path: Path):  # noqa: F811
    """An invoice of 1000 eur created at START, 400 already paid (a partial payment): attempt 1 fails at
    START+3600 with the next retry a day later. The attempt row: attempted_at is the event's time
    (START+3600), not the invoice's creation; amount_due 1000, amount_paid 400, amount_remaining
    1000 - 400 = 600, each its own field; currency eur; Stripe customer cus_A, subscription sub_A,
    customer acme (the subscription's metadata)."""
    t = START + 3600
    inv = invoice("in_1", amount_due=1000, amount_paid=400, attempt_count=1, currency="eur",
                  next_payment_attempt=t + 86_400, created=START)
    land(con, tmp_path, [[event("evt_1", "invoice.payment_failed", t, inv)]])
    assert con.execute(
        "SELECT invoice_id, attempt_count, outcome, attempted_at, customer, customer_id, subscription_id, currency,"
        " amount_due, amount_paid, amount_remaining, next_payment_attempt FROM stripe_payment_attempts"
    ).fetchall() == [("in_1", 1, "failed", ts(t), "cus_A", "acme", "sub_A", "eur", 1000, 400, 600, ts(t + 86_400))]


# -- lines ----------------------------------------------------------------------------------------

def test_a_line_without_a_currency_takes_its_invoices(con, tmp_path: Path):  # noqa: F811
    """A line whose payload carries no `currency` is in its invoice's currency (eur here), not NULL."""
    ln = line("il_1", price="price_api", quantity_decimal="3", amount=30, start=START, end=START + 10)
    del ln["currency"]
    land(con, tmp_path, [[event("evt_1", "invoice.finalized", START, invoice("in_1", currency="eur", lines=[ln]))]])
    assert con.execute("SELECT line_id, amount, currency FROM stripe_invoice_lines").fetchall() == [("il_1", 30, "eur")]


def test_a_drafts_lines_are_in_the_state(con, tmp_path: Path):  # noqa: F811
    """docs: one row per line of the latest invoice version, whatever its status: a draft's lines
    (what Stripe will bill when it finalizes) are rows too."""
    ln = line("il_1", price="price_api", quantity_decimal="3", amount=30, start=START, end=START + 10)
    land(con, tmp_path, [[event("evt_1", "invoice.created", START, invoice("in_1", status="draft", lines=[ln]))]])
    assert con.execute("SELECT invoice_id, line_id, amount FROM stripe_invoice_lines").fetchall() == [
        ("in_1", "il_1", 30)]


# -- rebuild_state ---------------------------------------------------------------------------------

def test_rebuild_state_returns_each_tables_row_count(con, tmp_path: Path):  # noqa: F811
    """One invoice with two lines and two failed attempts, one subscription: rebuild_state counts
    1 invoice, 2 lines, 1 subscription and 2 attempts, each under its own name; a second rebuild
    from the same events counts the same (the tables are rebuilt, not appended to)."""
    lines = [line(f"il_{n}", price="price_api", quantity_decimal="3", amount=30, start=START, end=START + 10)
             for n in (1, 2)]
    land(con, tmp_path, [[
        event("evt_1", "customer.subscription.created", START, subscription("sub_A")),
        event("evt_2", "invoice.payment_failed", START + 60, invoice("in_1", attempt_count=1, lines=lines)),
        event("evt_3", "invoice.payment_failed", START + 120, invoice("in_1", attempt_count=2, lines=lines)),
    ]])
    expected = {"invoices": 1, "invoice_lines": 2, "subscriptions": 1, "payment_attempts": 2}
    assert rebuild_state(con) == expected
    assert rebuild_state(con) == expected


def test_without_the_catalogs_tables_the_state_falls_back_to_the_metadata(con, tmp_path: Path):  # noqa: F811
    """`_customer_map_table` and `_meter_map_table` stand in an empty table where the warehouse has no
    `stripe_customer_map` / `stripe_objects`: the rebuild still runs, the invoice and its attempt are
    the subscription metadata's customer (acme), and the line has no meter of ours."""
    con.execute("DROP TABLE stripe_customer_map")
    con.execute("DROP TABLE stripe_objects")
    ln = line("il_1", price="price_api", quantity_decimal="3", amount=30, start=START, end=START + 10)
    failed = invoice("in_1", attempt_count=1, lines=[ln])
    land(con, tmp_path, [[event("evt_1", "invoice.payment_failed", START, failed)]])
    assert con.execute("SELECT invoice_id, customer_id FROM stripe_invoices").fetchall() == [("in_1", "acme")]
    assert con.execute("SELECT invoice_id, customer_id FROM stripe_payment_attempts").fetchall() == [("in_1", "acme")]
    assert con.execute("SELECT line_id, meter FROM stripe_invoice_lines").fetchall() == [("il_1", None)]


def test_the_metadata_column_is_the_invoices_own_not_its_subscriptions(con, tmp_path: Path):  # noqa: F811
    """cus_X is mapped to no customer of ours. Its subscription says beta, the invoice itself says gamma:
    customer_id is beta (docs), and `metadata` keeps the invoice's own {"customer_id": "gamma"}, so the
    documented disagreement query names the invoice with beta and gamma."""
    inv = invoice("in_1", customer="cus_X", customer_id="gamma")
    inv["parent"]["subscription_details"]["metadata"] = {"customer_id": "beta"}
    land(con, tmp_path, [[event("evt_1", "invoice.finalized", START, inv)]])
    assert con.execute("SELECT invoice_id, customer_id, metadata ->> 'customer_id' FROM stripe_invoices"
                       " WHERE metadata ->> 'customer_id' <> customer_id").fetchall() == [("in_1", "beta", "gamma")]

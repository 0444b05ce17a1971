"""Gaps found by a hand mutation audit of metering/dunning (mutants30, a pass over actions, run, suspensions,
summary, frames and money): money text for a currency written in capitals and the size limit of a policy
amount; the finance summary's order for an invoice in dunning before its first step; the suspensions
published for a clock given without a zone, with a fraction of a second, and for one customer in two
currencies; and how a Stripe action's error, request id and read-back are recorded in the ledger.

Each test names, in its docstring, the mutant it was written against (ids of the audit's report)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import duckdb
import polars as pl
import pytest
import stripe
from dunning_helpers import DAY, T0, put_invoice, write_rules
from test_actions import REMOVABLE, _FakeEvents
from test_dunning_mutants25 import WRITE_OFF_POLICY

from metering.dunning.money import minor_to_text_expr, parse_major
from metering.dunning.policy import load_policy
from metering.dunning.run import run_dunning
from metering.dunning.state import STATE_SCHEMA
from metering.dunning.summary import dunning_summary
from metering.dunning.suspensions import compute_suspensions, publish_suspensions

# --- money ---------------------------------------------------------------------------------------------


def test_money_text_reads_a_currency_written_in_capitals() -> None:
    """(M10: the currency no longer lower-cased before its digits are looked up.) JPY has no minor unit and
    BHD three places, whatever the case they are written in: 1200 JPY -> "1200", 1234 BHD -> "1.234",
    and USD (two places) 1234 -> "12.34". Looked up as written, JPY and BHD would fall back to two places
    ("12.00", "12.34")."""
    frame = pl.DataFrame({"amount": [1200, 1234, 1234], "currency": ["JPY", "BHD", "USD"]})
    assert frame.select(minor_to_text_expr("amount", "currency").alias("text"))["text"].to_list() == ["1200", "1.234", "12.34"]


def test_an_amount_that_is_not_text_is_refused_as_not_a_number() -> None:
    """(M11: TypeError no longer caught.) `Decimal(None)` raises TypeError: it must come out as the readable
    ValueError the policy check reports, not a traceback."""
    with pytest.raises(ValueError, match=r"^None is not a decimal number$"):
        parse_major(None, "usd")  # type: ignore[arg-type]


def test_an_amount_up_to_ten_to_the_thirty_is_read_and_a_larger_one_refused() -> None:
    """(M01: the limit moved from 10^30 to 10^31.) 1e30 has adjusted exponent 30, the largest allowed:
    10^30 USD is 10^32 cents. 1e31 (exponent 31) is refused as too large, naming the text."""
    assert parse_major("1e30", "usd") == 10**32
    with pytest.raises(ValueError, match=r"^'1e31' is too large$"):
        parse_major("1e31", "usd")


# --- summary -------------------------------------------------------------------------------------------


def _states(*rows: dict) -> pl.DataFrame:
    """A `dunning_state` frame: the given columns of each row, the others NULL."""
    return pl.DataFrame(list(rows)).select(
        [pl.col(c).cast(t) if c in rows[0] else pl.lit(None, dtype=t).alias(c) for c, t in STATE_SCHEMA.items()])


def test_an_invoice_in_dunning_before_its_first_step_is_listed_after_the_steps() -> None:
    """(U07: nulls first.) usd: in_1 in dunning at step 0 (first_reminder, 50.00 remaining) and in_2 in
    dunning whose first step is not yet due (no step, 20.00 remaining). The in_dunning rows go by step, the
    one without a step last, then at risk: 70.00 over both."""
    state = _states(
        {"invoice_id": "in_1", "currency": "usd", "state": "in_dunning", "step_index": 0,
         "step_name": "first_reminder", "amount_remaining": 5000},
        {"invoice_id": "in_2", "currency": "usd", "state": "in_dunning", "step_index": None,
         "step_name": None, "amount_remaining": 2000},
    )
    assert dunning_summary(state).select("category", "step_index", "invoices", "amount").rows() == [
        ("in_dunning", 0, 1, "50.00"),
        ("in_dunning", None, 1, "20.00"),
        ("at_risk", None, 2, "70.00"),
    ]


# --- suspensions ---------------------------------------------------------------------------------------


def _suspended_ledger(*rows: tuple[str, datetime]) -> pl.DataFrame:
    """Ledger rows of performed suspensions: (invoice, completed_at)."""
    return pl.DataFrame(
        [{"invoice_id": i, "action": "suspend", "status": "done", "completed_at": at} for i, at in rows],
        schema={"invoice_id": pl.String, "action": pl.String, "status": pl.String,
                "completed_at": pl.Datetime("us", "UTC")})


def test_a_customer_suspended_in_two_currencies_has_a_row_per_currency() -> None:
    """(S15: grouped by customer only.) cus_1 is suspended over in_1 (50.00 USD) and in_2 (1200 JPY): one row
    per customer x currency, as the schema says, in currency order (jpy before usd); amounts are never
    added across currencies."""
    state = _states(
        {"invoice_id": "in_1", "stripe_customer": "cus_1", "customer_id": "c_1", "currency": "usd",
         "state": "in_dunning", "amount_remaining": 5000},
        {"invoice_id": "in_2", "stripe_customer": "cus_1", "customer_id": "c_1", "currency": "jpy",
         "state": "in_dunning", "amount_remaining": 1200},
    )
    ledger = _suspended_ledger(("in_1", T0 + 14 * DAY), ("in_2", T0 + 15 * DAY))
    out = compute_suspensions(state, ledger, T0 + 15 * DAY)
    assert out.select("stripe_customer", "currency", "invoice_ids", "amount_remaining_minor",
                      "amount_remaining", "suspended_since").rows() == [
        ("cus_1", "jpy", "in_2", 1200, "1200", T0 + 15 * DAY),
        ("cus_1", "usd", "in_1", 5000, "50.00", T0 + 14 * DAY),
    ]


def test_the_published_files_keep_the_fraction_of_a_second_and_read_a_clock_without_a_zone_as_utc(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """(S09: the CSV's times cut to the second; S12: the JSON's published_at taken as given, not in UTC.)
    in_1 was suspended at 2026-11-16 09:30:00.123456 UTC (a run's clock has microseconds). Published with
    the clock 2026-11-17 09:30 given without a zone (taken as UTC, as everywhere in the engine): the JSON
    says published_at "2026-11-17T09:30:00Z", not a local time without its zone; the CSV and the JSON give
    suspended_since to the microsecond, "2026-11-16T09:30:00.123456Z"."""
    since = T0 + 14 * DAY + timedelta(microseconds=123456)
    state = _states({"invoice_id": "in_1", "stripe_customer": "cus_1", "customer_id": "c_1", "currency": "usd",
                     "state": "in_dunning", "amount_remaining": 5000})
    naive = datetime(2026, 11, 17, 9, 30)
    out = compute_suspensions(state, _suspended_ledger(("in_1", since)), naive)
    folder = publish_suspensions(wh, out, naive, tmp_path / "published")
    document = json.loads((folder / "suspensions.json").read_text())
    assert document["published_at"] == "2026-11-17T09:30:00Z"
    assert [s["suspended_since"] for s in document["suspended"]] == ["2026-11-16T09:30:00.123456Z"]
    csv = pl.read_csv(folder / "suspensions.csv", infer_schema=False)
    assert csv.select("suspended_since", "published_at").rows() == [
        ("2026-11-16T09:30:00.123456Z", "2026-11-17T09:30:00Z")]
    assert wh.execute("SELECT published_at FROM suspensions").fetchall() == [
        (datetime(2026, 11, 17, 9, 30, tzinfo=timezone.utc),)]


# --- actions -------------------------------------------------------------------------------------------

NAMED_POLICY = """
default:
  steps:
    - {name: first_reminder, day: 0, action: reminder, template: t}
templates:
  t: {subject: "Invoice {invoice_id}", body: "Dear {customer_id}: {amount} {currency} is unpaid"}
"""


def test_a_reminder_names_the_stripe_customer_when_ours_is_unknown_and_records_its_message(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A49: the customer placeholder no longer falls back to Stripe's customer; A82: the ledger row no longer
    names the message it rendered.) in_1 (50.00 USD, Stripe customer cus_in_1) has no customer id of ours:
    its reminder at T0 greets "cus_in_1", not an empty name. The ledger row's message_id is the message
    the outbox holds, so the two can be joined."""
    policy = load_policy(write_rules(tmp_path / "rules", NAMED_POLICY))
    put_invoice(wh, "in_1", customer_id=None)
    run_dunning(wh, None, policy, T0)
    outbox = wh.execute("SELECT message_id, body FROM dunning_outbox").fetchall()
    assert [body for _, body in outbox] == ["Dear cus_in_1: 50.00 USD is unpaid"]
    assert wh.execute("SELECT message_id FROM dunning_actions").fetchall() == [(outbox[0][0],)]


class _Invoices:
    """`client.v1.invoices` of a fake Stripe: `retrieve` answers open, attempt_count 1, no retry scheduled;
    `pay` raises `error` if given, else answers `pays` with the request id `req_pay`."""

    def __init__(self, pays: str = "open", error: Exception | None = None) -> None:
        self.pays, self.error, self.paid = pays, error, []

    def retrieve(self, invoice_id: str) -> object:
        return SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None)

    def pay(self, invoice_id: str, options: dict) -> object:
        self.paid.append(options["idempotency_key"])
        if self.error is not None:
            raise self.error
        return SimpleNamespace(status=self.pays, last_response=SimpleNamespace(request_id="req_pay"))


def _client(invoices: _Invoices, events: list | None = None) -> object:
    return SimpleNamespace(v1=SimpleNamespace(invoices=invoices, events=_FakeEvents(events)))


def _retry_row(con: duckdb.DuckDBPyConnection) -> tuple:
    return con.execute("SELECT status, outcome, stripe_request_id, last_error FROM dunning_actions"
                       " WHERE step_name = 'payment_retry'").fetchone()


def test_a_retry_records_stripes_request_id(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A30: the request id of Stripe's answer dropped.) REMOVABLE: reminder day 0, retry day 3. in_1 fails
    at T0; on day 3 (2026-11-05 09:30) the retry is made once, Stripe answers paid in its request req_pay:
    the row is done, paid, and keeps req_pay (the audit trail's link to Stripe's request log)."""
    policy = load_policy(write_rules(tmp_path / "rules", REMOVABLE))
    put_invoice(wh, "in_1")
    run_dunning(wh, None, policy, T0)
    invoices = _Invoices(pays="paid")
    run_dunning(wh, _client(invoices), policy, T0 + 3 * DAY)
    assert invoices.paid == ["dunning:in_1:payment_retry"]
    assert _retry_row(wh) == ("done", "paid", "req_pay", None)


def test_a_refusal_is_recorded_with_stripes_message_and_no_key(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A33: the error text no longer redacted; A34: the exception's text, which prefixes the request id,
    taken instead of Stripe's message.) On day 3 Stripe refuses the retry for good (invalid request, code
    invoice_not_open, request req_refused) with a message that echoes a secret key shape. The row is
    rejected with the request id req_refused in its own column; outcome and last_error are the class, the
    code and Stripe's message, "Request req_refused: " not repeated in it, the key shape masked."""
    policy = load_policy(write_rules(tmp_path / "rules", REMOVABLE))
    put_invoice(wh, "in_1")
    run_dunning(wh, None, policy, T0)
    secret = "sk_test_" + "a1" * 12
    error = stripe.InvalidRequestError(f"Invoice not open (key {secret})", None, code="invoice_not_open",
                                       headers={"request-id": "req_refused"})
    run_dunning(wh, _client(_Invoices(error=error)), policy, T0 + 3 * DAY)
    text = "InvalidRequestError (invoice_not_open): Invoice not open (key [REDACTED])"
    assert _retry_row(wh) == ("rejected", text, "req_refused", text)


# --- defects found by reading (fixed in the thirtieth session; each failed on the code before) ---------


def test_the_summary_text_table_keeps_its_columns_for_every_category() -> None:
    """(Defect D1, found by reading `format_summary`.) usd: in_2 (0.50, under the minimum) and in_1 (50.00,
    a new subscription's declined first invoice). Every line of the terminal table is as long as its header
    and each figure ends under its heading: the category column was 13 characters wide, and
    `subscription_incomplete` (23) pushed that row's step, count and amounts 10 characters right."""
    from metering.dunning.summary import format_summary

    state = _states(
        {"invoice_id": "in_1", "currency": "usd", "state": "not_in_dunning", "reason": "subscription_incomplete",
         "amount_due": 5000, "amount_remaining": 5000},
        {"invoice_id": "in_2", "currency": "usd", "state": "not_in_dunning", "reason": "below_minimum",
         "amount_due": 50, "amount_remaining": 50},
    )
    lines = format_summary(dunning_summary(state)).split("\n")
    assert [line.split()[1] for line in lines[2:]] == ["below_minimum", "subscription_incomplete"]
    assert {len(line) for line in lines} == {len(lines[0])}
    count_at = lines[0].index("invoices") + len("invoices") - 1   # the count (1) ends under its heading
    assert [line[count_at] for line in lines[2:]] == ["1", "1"]


def _die_after_ledger_row(con: duckdb.DuckDBPyConnection, rules: Path, now: datetime, step: str) -> None:
    """A run killed right after `step`'s pending ledger row was committed (nothing sent to Stripe)."""
    from metering.dunning.actions import ActionHooks

    class Crash(BaseException):
        pass

    def crash(row: dict) -> None:
        if row["step_name"] == step:
            raise Crash

    with pytest.raises(Crash):
        run_dunning(con, _client(_Invoices()), load_policy(rules), now, hooks=ActionHooks(after_ledger_commit=crash))


class _LiveInvoices(_Invoices):
    """As `_Invoices`, but `retrieve` shows the invoice in `status`; a write-off is never expected."""

    def __init__(self, status: str) -> None:
        super().__init__()
        self.status = status

    def retrieve(self, invoice_id: str) -> object:
        return SimpleNamespace(status=self.status, attempt_count=1, next_payment_attempt=None)


def test_a_pending_write_off_whose_step_was_removed_is_done_when_stripe_shows_it_made(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A65: a pending write-off of a removed step no longer read back from Stripe; A25: a pending row
    stamped as completed.) in_1 fails at T0 (2026-11-02 09:30); reminder at T0, retry on day 3 (open).
    Day 30: the run dies right after the write-off's pending row was committed: pending, 1 attempt, not
    completed. The write_off step is then deleted from the policy. Day 31: Stripe shows the invoice
    uncollectible (our webhooks lag, so our state still has it in dunning): the call went through before
    the crash, so the row is `done` (uncollectible), not `skipped` as never made, and never sent again."""
    rules = write_rules(tmp_path / "rules", WRITE_OFF_POLICY)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    run_dunning(wh, _client(_Invoices()), load_policy(rules), T0 + 3 * DAY)
    _die_after_ledger_row(wh, rules, T0 + 30 * DAY, "write_off")
    query = "SELECT status, outcome, attempts, completed_at FROM dunning_actions WHERE step_name = 'write_off'"
    assert wh.execute(query).fetchall() == [("pending", None, 1, None)]

    write_rules(rules, WRITE_OFF_POLICY.replace("    - {name: write_off, day: 30, action: write_off}\n", ""))
    result = run_dunning(wh, _client(_LiveInvoices("uncollectible")), load_policy(rules), T0 + 31 * DAY)
    assert (result.report.counts, result.report.errors) == ({"write_off:done": 1}, [])
    assert wh.execute(query).fetchall() == [("done", "uncollectible", 1, T0 + 31 * DAY)]


def test_a_zero_written_with_a_large_exponent_is_zero_not_too_large() -> None:
    """(Defect D2, found by reading `parse_major`.) "0e31" is zero (Decimal keeps the exponent: adjusted() is
    31), and a minimum of zero is allowed; the size check, made on the exponent alone, refused it as
    "'0e31' is too large". Zero is 0 minor units in any currency."""
    assert parse_major("0e31", "usd") == 0
    assert parse_major("0E+40", "jpy") == 0


def test_a_payment_event_stripe_made_without_our_key_is_not_taken_for_our_retry(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A38: the event's Idempotency-Key no longer compared.) REMOVABLE: reminder day 0, retry day 3. Day 3
    (2026-11-05 09:30): the run dies right after the retry's pending row, before the charge. Stripe's log
    then holds an invoice.payment_failed on in_1 from one of its own automatic retries (a request without
    our key). An hour later the run reads the log back: no event carries dunning:in_1:payment_retry, so our
    charge was never made; it is made now, once (outcome status:open), not recorded as attempted."""
    rules = write_rules(tmp_path / "rules", REMOVABLE)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    _die_after_ledger_row(wh, rules, T0 + 3 * DAY, "payment_retry")
    stripes_own = SimpleNamespace(type="invoice.payment_failed", request=SimpleNamespace(idempotency_key=None),
                                  data=SimpleNamespace(object=SimpleNamespace(id="in_1")))
    invoices = _Invoices()
    result = run_dunning(wh, _client(invoices, [stripes_own]), load_policy(rules), T0 + 3 * DAY + timedelta(hours=1))
    assert (result.report.counts, invoices.paid) == ({"retry:done": 1}, ["dunning:in_1:payment_retry"])
    assert _retry_row(wh) == ("done", "status:open", "req_pay", None)


class _Down:
    """`client.v1.invoices` and `client.v1.events` of a Stripe that cannot be reached."""

    def retrieve(self, invoice_id: str) -> object:
        raise stripe.APIConnectionError("connection refused")

    def list(self, params: dict) -> object:
        raise stripe.APIConnectionError("connection refused")


def test_a_pending_retry_that_cannot_be_read_back_in_an_outage_holds_the_suspension(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A66: a read-back that fails no longer holds the invoice's later steps.) REMOVABLE: reminder day 0, retry
    day 3, suspension day 14. Day 3: the run dies right after the retry's pending row; then the retry step is
    deleted from the policy. Day 14 (2026-11-16 09:30), Stripe is down: the pending retry cannot be read back
    (it may have paid the invoice), so the row stays pending with the error and the suspension waits
    (`deferred`): no customer is suspended over a payment that may have gone through."""
    rules = write_rules(tmp_path / "rules", REMOVABLE)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    _die_after_ledger_row(wh, rules, T0 + 3 * DAY, "payment_retry")
    write_rules(rules, REMOVABLE.replace("    - {name: payment_retry, day: 3, action: retry}\n", ""))
    down = SimpleNamespace(v1=SimpleNamespace(invoices=_Down(), events=_Down()))
    result = run_dunning(wh, down, load_policy(rules), T0 + 14 * DAY)
    assert result.report.counts == {"retry:error": 1, "suspend:deferred": 1}
    assert result.report.errors == ["dunning:in_1:payment_retry: APIConnectionError: connection refused"]
    assert wh.execute("SELECT step_name, status FROM dunning_actions ORDER BY step_index").fetchall() == [
        ("first_reminder", "done"), ("payment_retry", "pending")]
    assert result.suspensions.is_empty()


# --- frames --------------------------------------------------------------------------------------------


def test_conform_casts_the_columns_a_frame_has_and_adds_the_missing_ones() -> None:
    """(F02: only the missing columns cast.) A frame as DuckDB or a hand-built dict gives it: `step_index`
    as Int64 and `amount` as text. Conformed to {invoice_id: String, step_index: Int32, amount: Int64,
    due_at: UTC datetime}: the columns in the schema's order, each of its type (the joins on step_index
    and the sums need the schema's types), and due_at, absent, NULL."""
    from metering.dunning.frames import conform

    schema = {"invoice_id": pl.String, "step_index": pl.Int32, "amount": pl.Int64,
              "due_at": pl.Datetime("us", "UTC")}
    out = conform(pl.DataFrame({"amount": ["5000"], "step_index": [2], "invoice_id": ["in_1"]}), schema)
    assert out.schema == pl.Schema(schema)
    assert out.rows() == [("in_1", 2, 5000, None)]


def test_a_pending_write_off_whose_invoice_is_written_off_is_confirmed_with_its_outcome(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A56: a confirmed write-off recorded with another outcome.) WRITE_OFF_POLICY; in_1 fails at T0 and its
    retry on day 3 comes back open. Day 30 (2026-12-02 09:30): the run dies right after the write-off's pending
    row. Stripe's invoice.marked_uncollectible webhook then lands (the reconciled row: uncollectible), so the
    invoice has left dunning written off: the next run confirms the row without asking Stripe, `done`,
    outcome `uncollectible`, as a write-off made in one go records it."""
    rules = write_rules(tmp_path / "rules", WRITE_OFF_POLICY)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    run_dunning(wh, _client(_Invoices()), load_policy(rules), T0 + 3 * DAY)
    _die_after_ledger_row(wh, rules, T0 + 30 * DAY, "write_off")
    put_invoice(wh, "in_1", status="uncollectible", state_event_created=T0 + 30 * DAY + timedelta(minutes=1))
    result = run_dunning(wh, None, load_policy(rules), T0 + 30 * DAY + timedelta(hours=1))
    assert (result.report.counts, result.report.errors) == ({"write_off:done": 1}, [])
    assert wh.execute("SELECT status, outcome FROM dunning_actions WHERE step_name = 'write_off'").fetchall() == [
        ("done", "uncollectible")]
    assert result.state.select("invoice_id", "state").rows() == [("in_1", "written_off")]


def test_the_summary_text_table_widens_its_step_column_for_a_long_step_name() -> None:
    """A policy's step names are the user's: one of 31 characters (`second_reminder_after_the_grace`) widens
    the step column to 31, from its 20, so every line is as long as the header and the count still
    ends under `invoices`."""
    from metering.dunning.summary import format_summary

    state = _states(
        {"invoice_id": "in_1", "currency": "usd", "state": "in_dunning", "step_index": 1,
         "step_name": "second_reminder_after_the_grace", "amount_due": 5000, "amount_remaining": 5000},
    )
    lines = format_summary(dunning_summary(state)).split("\n")
    assert lines[0].index("invoices") == 8 + 1 + 23 + 1 + 31 + 1   # currency, category, step, a space each
    assert {len(line) for line in lines} == {len(lines[0])}
    count_at = lines[0].index("invoices") + len("invoices") - 1
    assert all(line[count_at] == "1" for line in lines[2:])

"""Gaps found by a hand mutation audit of metering/dunning (mutants25, a second pass over state, actions,
suspensions, policy and money): a close kept when re-run at the same clock; a skipped write-off, a never
attempted invoice and a partly paid one under the minimum; day 0 from the earliest failed attempt and the
plan effective today; the idempotency key's 255-character limit and empty emails; money text and the
policy's inclusive limits; who is suspended when ids are missing or the suspension never completed; how
declined, refused, read-back and client-less Stripe actions are recorded; and the ordering of a removed
step's pending row.

Each test names, in its docstring, the mutant it was written against (ids of the audit's report)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import polars as pl
import pytest
import stripe
from dunning_helpers import (
    DAY, NO_STRIPE_POLICY, T0, SmtpRelay, pay_invoice, point_smtp_at, published_suspensions, put_invoice, write_rules,
)
from test_actions import REMOVABLE, _crash_with_pending, _fake_client, _FakeInvoices
from test_state import failures, frame, invoice, one

from metering.dunning.actions import ActionHooks, idempotency_key, read_emails
from metering.dunning.money import format_minor, minor_to_text_expr
from metering.dunning.policy import DunningPolicy, load_policy, validate_dunning
from metering.dunning.run import run_dunning
from metering.dunning.state import compute_state, current_state, read_failures, read_plans


def test_a_close_seen_at_this_very_clock_is_kept_when_the_webhook_lands(rules_dir: Path) -> None:
    """(S3: `closed_at <= now` -> `<`.) T0 + 3 d (2026-11-05 09:30): our payment_retry came back paid,
    so the invoice is recovered at once, closed at the run's clock (no paid_at yet). Its webhook then
    lands with Stripe's paid_at 5 seconds later (09:30:05); re-run at the SAME clock, the first close
    stands: closed_at is still 09:30:00, never a time after the run's clock."""
    policy = load_policy(rules_dir)
    now = T0 + 3 * DAY
    performed = pl.DataFrame({"invoice_id": ["in_1"], "step_index": [1], "step_name": ["payment_retry"],
                              "action": ["retry"], "status": ["done"], "outcome": ["paid"]})
    first = compute_state(frame(invoice()), policy, now, failures=failures(("in_1", T0)), performed=performed)
    assert (one(first)["state"], one(first)["closed_at"]) == ("recovered", now)
    paid = frame(invoice(status="paid", amount_paid=5000, amount_remaining=0, paid_at=now + timedelta(seconds=5)))
    again = one(compute_state(paid, policy, now, failures=failures(("in_1", T0)), previous=first,
                              performed=performed))
    assert (again["state"], again["reason"], again["closed_at"]) == ("recovered", "paid", now)


def test_a_skipped_write_off_does_not_write_the_invoice_off(rules_dir: Path) -> None:
    """(S4: `written_off_by_us` counting any write_off row, not only a done one.) Day 30 (2026-12-02
    09:30): the GET before our write-off showed the invoice already paid at Stripe, so the write_off row
    is `skipped` (outcome stripe_paid) and no call was made. Our reconciled row still says open (the
    webhook lags): the invoice is still in dunning at its last step, not written off by us."""
    policy = load_policy(rules_dir)
    performed = pl.DataFrame({"invoice_id": ["in_1"], "step_index": [4], "step_name": ["write_off"],
                              "action": ["write_off"], "status": ["skipped"], "outcome": ["stripe_paid"]})
    row = one(compute_state(frame(invoice()), policy, T0 + 30 * DAY, failures=failures(("in_1", T0)),
                            performed=performed))
    assert (row["state"], row["reason"], row["step_name"], row["closed_at"]) == (
        "in_dunning", "payment_failed", "write_off", None)


def test_an_open_invoice_never_attempted_is_not_listed(rules_dir: Path) -> None:
    """(S6: `attempt_count >= 1` -> `>= 0`.) An open invoice Stripe has not tried to charge yet
    (attempt_count 0, no failure event, never in dunning) has not failed: no dunning row at all."""
    state = compute_state(frame(invoice(attempt_count=0)), load_policy(rules_dir), T0 + DAY)
    assert state.height == 0


def test_day_zero_is_the_earliest_failed_attempt(wh: duckdb.DuckDBPyConnection, rules_dir: Path) -> None:
    """(S20: min(attempted_at) -> max.) Two failed attempts in stripe_payment_attempts, at T0 and
    T0 + 3 d, plus a succeeded one at T0 - 1 d that does not count: day 0 is the first failure, T0
    (2026-11-02 09:30), so at T0 + 7 d the final reminder (day 7) is reached; from the later failure it
    would be day 4, still the payment retry."""
    put_invoice(wh, "in_1", finalized_at=T0 - 2 * DAY)
    for n, (outcome, at) in enumerate([("succeeded", T0 - DAY), ("failed", T0 + 3 * DAY), ("failed", T0)]):
        wh.execute("INSERT INTO stripe_payment_attempts (invoice_id, attempt_count, outcome, event_id, event_type,"
                   " attempted_at) VALUES ('in_1', ?, ?, ?, 'invoice.payment_failed', ?)", [n, outcome, f"evt_{n}", at])
    assert read_failures(wh).rows() == [("in_1", T0)]
    row = one(current_state(wh, load_policy(rules_dir), T0 + 7 * DAY))
    assert (row["first_failed_at"], row["step_name"]) == (T0, "final_reminder")


def test_a_plan_effective_today_applies_today(wh: duckdb.DuckDBPyConnection) -> None:
    """(S21: `plan_effective_from <= today` -> `<`.) c1 was on starter from 2026-01-01 and moves to
    scale effective 2026-11-02 (inclusive, UTC dates): at 2026-11-02 09:30 its plan is scale; the day
    before (2026-11-01) it is still starter."""
    for plan, start in [("starter", "2026-01-01"), ("scale", "2026-11-02")]:
        wh.execute("INSERT INTO customer_plans (customer_id, email, currency, plan, plan_effective_from,"
                   " payment_behavior, source_line)"
                   " VALUES ('c1', 'a@c.example', 'usd', ?, CAST(? AS DATE), 'fails', 1)",
                   [plan, start])
    assert read_plans(wh, T0).rows() == [("c1", "scale")]
    assert read_plans(wh, T0 - DAY).rows() == [("c1", "starter")]


def test_an_idempotency_key_of_exactly_255_characters_is_kept_as_is() -> None:
    """(A17: `len(key) <= 255` -> `<`.) Stripe takes keys up to 255 characters: `dunning:` (8) + an
    invoice id of 240 + `:` + `step_1` (6) is 255, kept verbatim; one character more is hashed:
    `dunning:` + 64 hex digits (72 characters)."""
    invoice_id = "in_" + "x" * 237
    assert len(idempotency_key(invoice_id, "step_1")) == 255
    assert idempotency_key(invoice_id, "step_1") == f"dunning:{invoice_id}:step_1"
    longer = idempotency_key(invoice_id + "y", "step_1")
    assert len(longer) == 72 and longer.startswith("dunning:") and invoice_id not in longer


def test_an_empty_email_is_no_address(wh: duckdb.DuckDBPyConnection) -> None:
    """(A18: the `email <> ''` filter dropped.) c1 has an empty email on one plan row and none on
    another; c2 has a real one: only c2 has an address (max('') would give c1 the empty one)."""
    for cid, email, line in [("c1", "", 1), ("c1", None, 2), ("c2", "pay@two.example", 3)]:
        wh.execute("INSERT INTO customer_plans (customer_id, email, currency, plan, plan_effective_from,"
                   " payment_behavior, source_line) VALUES (?, ?, 'usd', 'starter', DATE '2026-01-01', 'fails', ?)",
                   [cid, email, line])
    assert read_emails(wh) == {"c2": "pay@two.example"}


def test_minor_units_render_with_their_leading_zeros_and_no_negative_zero() -> None:
    """(Y1: sign for `<= 0`; Y4: the fraction's zero-padding dropped.) In each currency's own digits:
    0 usd is 0.00 (not -0.00), 1005 usd is 10.05 (five cents, not 10.5), -5 usd is -0.05, 1005 kwd
    (three places) is 1.005, 7 kwd is 0.007, and 1200 jpy (none) is 1200, as `format_minor` says too."""
    cases = [(0, "usd", "0.00"), (1005, "usd", "10.05"), (-5, "usd", "-0.05"), (1005, "kwd", "1.005"),
             (7, "kwd", "0.007"), (1200, "jpy", "1200")]
    amounts = pl.DataFrame({"a": [c[0] for c in cases], "cur": [c[1] for c in cases]})
    assert amounts.select(minor_to_text_expr("a", "cur").alias("text"))["text"].to_list() == [c[2] for c in cases]
    assert [format_minor(a, cur) for a, cur, _ in cases] == [c[2] for c in cases]


def _policy_errors(tmp_path: Path, text: str) -> list[str]:
    """validate_dunning's messages for the policy `text`, without the file's path in front."""
    folder = write_rules(tmp_path / "r", text)
    prefix = f"{folder / 'dunning.yaml'}: "
    return [e.removeprefix(prefix) for e in validate_dunning(folder)]


def test_the_policy_limits_are_inclusive(tmp_path: Path) -> None:
    """(P1: day 3650 refused; P3: the largest 64-bit minimum refused; P6: a 64-character name refused.)
    Day 3650 (ten years) is allowed, 3651 is not; a minimum of 92233720368547758.07 usd is 2**63 - 1 =
    9223372036854775807 minor units, the largest allowed, one cent more is refused; a step name is a
    letter and up to 62 more characters: 63 in all pass, 64 do not."""
    name63 = "s" + "x" * 62
    text = (NO_STRIPE_POLICY.replace("{name: suspension, day: 14,", f"{{name: {name63}, day: 3650,")
            .replace('usd: "1.00"', 'usd: "92233720368547758.07"'))
    assert _policy_errors(tmp_path / "ok", text) == []
    policy = load_policy(write_rules(tmp_path / "ok" / "r", text))
    assert policy.default.minimum_minor["usd"] == 2**63 - 1
    assert [(s.name, s.day) for s in policy.default.steps][-1] == (name63, 3650)
    worse = (text.replace(f"{{name: {name63}, day: 3650,", f"{{name: {name63}y, day: 3651,")
             .replace('usd: "92233720368547758.07"', 'usd: "92233720368547758.08"'))
    assert _policy_errors(tmp_path / "bad", worse) == [
        f"default.steps[2].name: required, lower-case letters, digits and underscores, got '{name63}y'",
        "default.steps[2].day: required, a whole number of days from 0 to 3650 after the first failure, got 3651",
        "default.minimum_amount.usd: '92233720368547758.08' is too large (at most 9223372036854775807 in minor units)",
    ]


def test_customers_known_only_by_our_id_are_suspended_apart(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """(U2: `coalesce(stripe_customer, customer_id)` -> `stripe_customer`.) in_a (c_a, 50.00 USD) and in_b
    (c_b, 2.50 USD) carry no Stripe customer id; both fail at T0 and are suspended on day 14 (2026-11-16
    09:30). They are two customers: two rows, each keyed by our own id, not one row of 52.50 for nobody."""
    put_invoice(wh, "in_a", customer=None, customer_id="c_a")
    put_invoice(wh, "in_b", customer=None, customer_id="c_b", amount_due=250, amount_remaining=250)
    run_dunning(wh, None, no_stripe_policy, T0 + 14 * DAY)
    assert [(r["customer_id"], r["stripe_customer"], r["invoice_ids"], r["amount_remaining"])
            for r in published_suspensions(isolated_env)] == [("c_a", "c_a", ["in_a"], "50.00"), ("c_b", "c_b", ["in_b"], "2.50")]


def test_a_suspended_customer_row_names_our_customer_id_when_one_invoice_lacks_it(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """(U3: `customer_id.drop_nulls().first()` -> `.first()`.) cus_x's in_1 carries no customer_id of ours,
    its in_2 carries c_x; both fail at T0 and are suspended on day 14. The one row for cus_x names c_x
    (in_1 sorts first and would give none), amounts 50.00 + 2.50 = 52.50."""
    put_invoice(wh, "in_1", customer="cus_x", customer_id=None)
    put_invoice(wh, "in_2", customer="cus_x", customer_id="c_x", amount_due=250, amount_remaining=250)
    run_dunning(wh, None, no_stripe_policy, T0 + 14 * DAY)
    assert [(r["customer_id"], r["stripe_customer"], r["invoice_ids"], r["amount_remaining_minor"])
            for r in published_suspensions(isolated_env)] == [("c_x", "cus_x", ["in_1", "in_2"], 5250)]


def test_a_suspension_that_never_completed_does_not_suspend(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """(U1: the suspend rows counted whatever their status.) Day 14 (2026-11-16 09:30): the run stops
    (a crash) right after the suspension's ledger row is committed `pending`. On day 15 Stripe marks the
    invoice uncollectible: the next run finds the invoice written off, supersedes the pending
    suspension (it never took effect), and publishes nobody: only a `done` suspension suspends."""
    def crash(row: dict) -> None:
        if row["action"] == "suspend":
            raise RuntimeError("killed after the ledger commit")

    put_invoice(wh, "in_1")
    with pytest.raises(RuntimeError):
        run_dunning(wh, None, no_stripe_policy, T0 + 14 * DAY, hooks=ActionHooks(after_ledger_commit=crash))
    assert wh.execute("SELECT step_name, status FROM dunning_actions WHERE action = 'suspend'").fetchall() == [
        ("suspension", "pending")]
    put_invoice(wh, "in_1", status="uncollectible", state_event_created=T0 + 15 * DAY)
    result = run_dunning(wh, None, no_stripe_policy, T0 + 15 * DAY)
    assert result.state.select("invoice_id", "state").rows() == [("in_1", "written_off")]
    assert wh.execute("SELECT status, outcome FROM dunning_actions WHERE action = 'suspend'").fetchall() == [
        ("superseded", "left_dunning:written_off")]
    assert published_suspensions(isolated_env) == []


def test_the_minimum_is_measured_on_what_remains_of_an_open_invoice(rules_dir: Path) -> None:
    """(S11: the open invoice's amount_due compared with the minimum, not its amount_remaining.) 50.00 USD
    due, 49.50 already paid: 0.50 (50 minor units) remains, under the shipped minimum of 1.00 (100), so it
    is never chased; with 1.50 remaining (150 >= 100) it is."""
    policy = load_policy(rules_dir)
    state = compute_state(frame(invoice("in_1", amount_paid=4950, amount_remaining=50),
                                invoice("in_2", amount_paid=4850, amount_remaining=150)),
                          policy, T0 + DAY, failures=failures(("in_1", T0), ("in_2", T0)))
    assert state.select("invoice_id", "state", "reason", "amount_remaining").rows() == [
        ("in_1", "not_in_dunning", "below_minimum", 50), ("in_2", "in_dunning", "payment_failed", 150)]


class _RefusingInvoices:
    """`client.v1.invoices` of a fake Stripe (as test_actions' fakes): every invoice is open with Stripe's
    attempt_count 3 and no retry scheduled; `pay` raises the error given for that invoice."""
    def __init__(self, errors: dict) -> None:
        self.errors, self.paid = errors, []

    def retrieve(self, invoice_id: str) -> object:
        return SimpleNamespace(status="open", attempt_count=3, next_payment_attempt=None)

    def pay(self, invoice_id: str, options: dict) -> object:
        self.paid.append(options["idempotency_key"])
        raise self.errors[invoice_id]


def test_a_declined_retry_is_done_a_refused_one_rejected_with_its_error_and_stripes_count(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A15: a declined card -> `rejected`; A12: a refusal's error not kept in last_error; A19: the row
    records our lagging state's attempt_count, not Stripe's.) Both invoices fail at T0; day 3 (2026-11-05
    09:30) is the payment_retry. Stripe says attempt_count 3 (our rows say 1). in_1's card is declined:
    the retry happened, `done`, outcome card_declined:card_declined, no error. in_2 is refused for good
    (invalid request, code invoice_not_open): `rejected`, and its error text is kept as the outcome and
    as last_error. Both rows record Stripe's 3; the reminders, decided from our state, record 1."""
    policy = load_policy(write_rules(tmp_path / "rules", REMOVABLE))
    put_invoice(wh, "in_1")
    put_invoice(wh, "in_2")
    run_dunning(wh, None, policy, T0)
    refused = "InvalidRequestError (invoice_not_open): Invoice is already paid"
    invoices = _RefusingInvoices({
        "in_1": stripe.CardError("Your card was declined.", None, "card_declined"),
        "in_2": stripe.InvalidRequestError("Invoice is already paid", None, code="invoice_not_open"),
    })
    result = run_dunning(wh, _fake_client(invoices), policy, T0 + 3 * DAY)
    assert (result.report.counts, result.report.errors) == ({"retry:done": 1, "retry:rejected": 1}, [])
    assert invoices.paid == ["dunning:in_1:payment_retry", "dunning:in_2:payment_retry"]
    assert wh.execute("SELECT invoice_id, step_name, status, outcome, attempt_count, last_error FROM dunning_actions"
                      " ORDER BY invoice_id, step_index").fetchall() == [
        ("in_1", "first_reminder", "done", "rendered", 1, None),
        ("in_1", "payment_retry", "done", "card_declined:card_declined", 3, None),
        ("in_2", "first_reminder", "done", "rendered", 1, None),
        ("in_2", "payment_retry", "rejected", refused, 3, refused),
    ]


def _stamped(event_type: str, invoice_id: str, key: str) -> object:
    """An event Stripe stamped with the request (and its Idempotency-Key) that caused it."""
    return SimpleNamespace(type=event_type, request=SimpleNamespace(idempotency_key=key),
                           data=SimpleNamespace(object=SimpleNamespace(id=invoice_id)))


WRITE_OFF_POLICY = """
default:
  steps:
    - {name: first_reminder, day: 0, action: reminder, template: t}
    - {name: payment_retry, day: 3, action: retry}
    - {name: write_off, day: 30, action: write_off}
templates:
  t: {subject: "s", body: "b"}
"""


def test_a_pending_write_off_then_paid_is_read_back_from_stripe_not_superseded(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A20: a pending write-off whose invoice left dunning superseded without asking Stripe.) in_1
    fails at T0; its retry on day 3 comes back open. Day 30 (2026-12-02 09:30): the run dies right after
    the write-off's pending row. Stripe's log shows invoice.marked_uncollectible stamped with our key
    (the call went through); then the customer paid (an uncollectible invoice can still be paid). The next
    run: recovered, and the write-off row is `done` (uncollectible), not `superseded`."""
    rules = write_rules(tmp_path / "rules", WRITE_OFF_POLICY)
    put_invoice(wh, "in_1")
    live = SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None)
    run_dunning(wh, _fake_client(_FakeInvoices(live)), load_policy(rules), T0)
    run_dunning(wh, _fake_client(_FakeInvoices(live)), load_policy(rules), T0 + 3 * DAY)
    _crash_with_pending(wh, rules, _fake_client(_FakeInvoices(live)), T0 + 30 * DAY, "write_off")
    pay_invoice(wh, "in_1", T0 + 30 * DAY + timedelta(hours=1))
    events = [_stamped("invoice.marked_uncollectible", "in_1", "dunning:in_1:write_off")]
    result = run_dunning(wh, _fake_client(_FakeInvoices(live), events), load_policy(rules), T0 + 31 * DAY)
    assert (result.report.counts, result.report.errors) == ({"write_off:done": 1}, [])
    assert result.state.select("invoice_id", "state").rows() == [("in_1", "recovered")]
    assert wh.execute("SELECT step_name, status, outcome FROM dunning_actions ORDER BY step_index").fetchall() == [
        ("first_reminder", "done", "rendered"), ("payment_retry", "done", "status:open"),
        ("write_off", "done", "uncollectible")]


def test_a_pending_retry_that_paid_before_a_crash_is_recorded_paid(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A14: a read-back paid event recorded as `attempted:invoice.paid`.) Day 3 (2026-11-05 09:30): the run
    dies right after the retry's pending row; Stripe's log shows invoice.paid stamped with our key and the
    webhook makes the invoice paid. The next run settles the row: `done`, outcome `paid` (our retry
    recovered it), never charged again."""
    rules = write_rules(tmp_path / "rules", WRITE_OFF_POLICY)
    put_invoice(wh, "in_1")
    live = SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None)
    run_dunning(wh, None, load_policy(rules), T0)
    _crash_with_pending(wh, rules, _fake_client(_FakeInvoices(live)), T0 + 3 * DAY, "payment_retry")
    pay_invoice(wh, "in_1", T0 + 3 * DAY)
    invoices = _FakeInvoices(SimpleNamespace(status="paid", attempt_count=1, next_payment_attempt=None))
    events = [_stamped("invoice.paid", "in_1", "dunning:in_1:payment_retry")]
    result = run_dunning(wh, _fake_client(invoices, events), load_policy(rules), T0 + 4 * DAY)
    assert (result.report.counts, result.report.errors, invoices.paid) == ({"retry:done": 1}, [], [])
    assert wh.execute("SELECT step_name, status, outcome FROM dunning_actions ORDER BY step_index").fetchall() == [
        ("first_reminder", "done", "rendered"), ("payment_retry", "done", "paid")]


def test_without_a_client_the_write_off_is_deferred_behind_the_unmade_retry(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A4: write_off dropped from the steps an unmade retry holds.) No Stripe client; in_1 fails at T0.
    At T0 + 30 d (2026-12-02 09:30) the retry (day 3) and the write-off (day 30) are both due: the retry is
    reported (no_stripe_client, once) and the write-off is `deferred` behind it (docs: `write_off:deferred`),
    not reported as a second call lacking a client; the invoice stays in dunning."""
    policy = load_policy(write_rules(tmp_path / "rules", WRITE_OFF_POLICY))
    put_invoice(wh, "in_1")
    result = run_dunning(wh, None, policy, T0 + 30 * DAY)
    assert result.report.counts == {"reminder:done": 1, "retry:no_stripe_client": 1, "write_off:deferred": 1}
    assert result.report.errors == ["dunning:in_1:payment_retry: no Stripe client configured (set STRIPE_API_KEY)"]
    assert result.state.select("invoice_id", "state").rows() == [("in_1", "in_dunning")]


def test_a_pending_retry_whose_invoice_stripe_wrote_off_is_superseded_not_confirmed(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A9: any pending row of a written-off invoice `confirm`ed, not only a write-off.) Day 3 (2026-11-05
    09:30): the run dies right after the retry's pending row, before the charge. Stripe then marks the
    invoice uncollectible on its own; its log has no event with our key. The next run: written off, and
    the retry is `superseded` (left_dunning:written_off): it never happened, it is not `done`."""
    rules = write_rules(tmp_path / "rules", WRITE_OFF_POLICY)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    live = SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None)
    _crash_with_pending(wh, rules, _fake_client(_FakeInvoices(live)), T0 + 3 * DAY, "payment_retry")
    put_invoice(wh, "in_1", status="uncollectible", state_event_created=T0 + 4 * DAY)
    gone = _FakeInvoices(SimpleNamespace(status="uncollectible", attempt_count=1, next_payment_attempt=None))
    result = run_dunning(wh, _fake_client(gone), load_policy(rules), T0 + 4 * DAY)
    assert (result.report.counts, result.report.errors, gone.paid) == ({"retry:superseded": 1}, [], [])
    assert result.state.select("invoice_id", "state").rows() == [("in_1", "written_off")]
    assert wh.execute("SELECT step_name, status, outcome FROM dunning_actions ORDER BY step_index").fetchall() == [
        ("first_reminder", "done", "rendered"), ("payment_retry", "superseded", "left_dunning:written_off")]


def test_a_removed_pending_retry_holds_a_step_now_earlier_in_the_schedule(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A16: removed-step rows no longer put first in their invoice.) in_1 fails at T0; on day 3 the run
    dies after the retry's pending row (index 1). The policy then loses first_reminder and payment_retry,
    so the suspension is now index 0. At T0 + 14 d (2026-11-16 09:30), without a client, the pending
    retry's fate is unknown: it is reported and holds the suspension (`deferred`), which would otherwise
    come first by index and suspend a customer whose charge may have paid."""
    rules = write_rules(tmp_path / "rules", REMOVABLE)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    live = SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None)
    _crash_with_pending(wh, rules, _fake_client(_FakeInvoices(live)), T0 + 3 * DAY, "payment_retry")
    edited = (REMOVABLE.replace("    - {name: first_reminder, day: 0, action: reminder, template: t}\n", "")
              .replace("    - {name: payment_retry, day: 3, action: retry}\n", ""))
    assert edited.count("name:") == 1
    policy = load_policy(write_rules(rules, edited))
    assert [(s.index, s.name) for s in policy.default.steps] == [(0, "suspension")]
    result = run_dunning(wh, None, policy, T0 + 14 * DAY)
    assert result.report.counts == {"retry:no_stripe_client": 1, "suspend:deferred": 1}
    assert published_suspensions(isolated_env) == []
    assert wh.execute("SELECT step_name, status FROM dunning_actions ORDER BY step_index").fetchall() == [
        ("first_reminder", "done"), ("payment_retry", "pending")]


def test_a_plan_override_without_steps_keeps_the_default_steps(tmp_path: Path) -> None:
    """(P5: a plan override without `steps` gets no steps.) `plans: {gold: {minimum_amount: {usd: "5.00"}}}`
    overrides only the minimum: gold's schedule has the default's three steps (days 0, 7, 14), its usd
    minimum is 500 minor units and jpy's 100 is inherited."""
    text = NO_STRIPE_POLICY.replace("templates:", 'plans:\n  gold: {minimum_amount: {usd: "5.00"}}\ntemplates:')
    policy = load_policy(write_rules(tmp_path / "rules", text))
    gold = policy.schedule_for("gold")
    assert gold.name == "gold" and gold.steps == policy.default.steps
    assert [(s.name, s.day) for s in gold.steps] == [("first_reminder", 0), ("final_reminder", 7), ("suspension", 14)]
    assert gold.minimum_minor == {"usd": 500, "jpy": 100}


def test_with_a_step_refused_the_order_checks_never_name_a_wrong_step(tmp_path: Path) -> None:
    """(P7: the write-off / once-only checks run even when a step was refused.) Step [0] has a bad name, so
    it is dropped; positions among the steps kept no longer match the file. The write-off ([1]) is not
    last, but reporting it from the kept steps would name `default.steps[0].action`, a step that is no
    write-off: only the bad name is reported (fix it, and the order is checked on the next run)."""
    text = """
default:
  steps:
    - {name: Bad, day: 0, action: reminder, template: t}
    - {name: write_off, day: 3, action: write_off}
    - {name: late_reminder, day: 7, action: reminder, template: t}
templates:
  t: {subject: "s", body: "b"}
"""
    assert _policy_errors(tmp_path, text) == [
        "default.steps[0].name: required, lower-case letters, digits and underscores, got 'Bad'"]
    fixed = text.replace("name: Bad,", "name: first,")
    assert _policy_errors(tmp_path / "fixed", fixed) == [
        "default.steps[1].action: write_off must be the last step (nothing can follow a write-off)"]


def test_a_reminder_waiting_for_the_relay_is_withdrawn_once_our_retry_paid(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch, smtp_relay: SmtpRelay,
) -> None:
    """(R1: reminders sent and suspensions published against the state from before the actions.) in_1
    (c_in_1, pay@one.example) fails at T0; its first reminder is rendered with no relay configured. Day 3
    (2026-11-05 09:30): the relay is up, and our payment_retry comes back paid (no webhook yet). The run
    sends against the state after its actions: recovered, so the waiting reminder is withdrawn
    (invoice_left_dunning), nothing reaches the relay, 0 sent. (A fast, fake-Stripe twin of
    test_dunning_mutants20c's sandbox test.)"""
    rules = write_rules(tmp_path / "rules", REMOVABLE)
    wh.execute("INSERT INTO customer_plans (customer_id, email, currency, plan, plan_effective_from,"
               " payment_behavior, source_line) VALUES ('c_in_1', 'pay@one.example', 'usd', 'starter',"
               " DATE '2026-01-01', 'fails', 2)")
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    point_smtp_at(monkeypatch, smtp_relay.port)
    invoices = _FakeInvoices(SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None), pays="paid")
    result = run_dunning(wh, _fake_client(invoices), load_policy(rules), T0 + 3 * DAY)
    assert (result.report.counts, result.report.errors) == ({"retry:done": 1}, [])
    assert (result.reminders_sent, smtp_relay.received) == (0, [])
    assert wh.execute("SELECT idempotency_key, status, last_error FROM dunning_outbox").fetchall() == [
        ("dunning:in_1:first_reminder", "withdrawn", "invoice_left_dunning")]
    assert result.state.select("invoice_id", "state", "amount_paid").rows() == [("in_1", "recovered", 5000)]


def test_a_retry_that_paid_before_a_crash_is_done_paid_not_skipped_for_stripes_status(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A6: the `stripe_<status>` skip applied even when the pending call is known to have taken effect.)
    Day 3 (2026-11-05 09:30): our retry is sent and Stripe answers paid, but the run dies before the row
    is closed (pending). An hour later the webhook has not landed (our row still says open); Stripe says
    paid. That paid is our own retry's: the row is `done`, outcome `paid`, attempts 2, no second charge,
    and the invoice is recovered at once (5000 paid) rather than skipped as `stripe_paid`."""

    class Crash(BaseException):
        pass

    def crash(row: dict) -> None:
        raise Crash

    rules = write_rules(tmp_path / "rules", WRITE_OFF_POLICY)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    invoices = _FakeInvoices(SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None), pays="paid")
    with pytest.raises(Crash):
        run_dunning(wh, _fake_client(invoices), load_policy(rules), T0 + 3 * DAY,
                    hooks=ActionHooks(after_stripe_call=crash))
    assert invoices.paid == ["dunning:in_1:payment_retry"]
    invoices.live = SimpleNamespace(status="paid", attempt_count=1, next_payment_attempt=None)
    result = run_dunning(wh, _fake_client(invoices), load_policy(rules), T0 + 3 * DAY + timedelta(hours=1))
    assert (result.report.counts, result.report.errors) == ({"retry:done": 1}, [])
    assert invoices.paid == ["dunning:in_1:payment_retry"]
    assert wh.execute("SELECT step_name, status, outcome, attempts FROM dunning_actions"
                      " ORDER BY step_index").fetchall() == [
        ("first_reminder", "done", "rendered", 1), ("payment_retry", "done", "paid", 2)]
    assert result.state.select("invoice_id", "state", "amount_paid").rows() == [("in_1", "recovered", 5000)]


def test_a_retry_stripe_shows_scheduled_waits_while_no_later_step_is_due(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(A7: `step_index < current_step` -> `<=`, so it is skipped at once.) Our state shows no Stripe retry
    scheduled (it lags); the GET just before charging shows one (next_payment_attempt set). Day 3
    (2026-11-05 09:30), the retry is the latest step due: it waits (no row, reported
    `wait:stripe_retrying`), nothing is charged; it is not skipped for good. On day 7 Stripe's schedule has
    ended and the retry is still the latest step due: it is made then."""
    rules = write_rules(tmp_path / "rules", WRITE_OFF_POLICY)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    invoices = _FakeInvoices(SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=T0 + 5 * DAY))
    result = run_dunning(wh, _fake_client(invoices), load_policy(rules), T0 + 3 * DAY)
    assert (result.report.counts, result.report.errors, invoices.paid) == ({"retry:wait:stripe_retrying": 1}, [], [])
    assert wh.execute("SELECT step_name FROM dunning_actions ORDER BY step_index").fetchall() == [("first_reminder",)]
    invoices.live = SimpleNamespace(status="open", attempt_count=2, next_payment_attempt=None)
    result = run_dunning(wh, _fake_client(invoices), load_policy(rules), T0 + 7 * DAY)
    assert (result.report.counts, invoices.paid) == ({"retry:done": 1}, ["dunning:in_1:payment_retry"])
